// A closing brace missing in a file; inside the macro, rustc itself rejects unbalanced
// brackets before `cnn!` sees them.
cnnc_model::cnn!(file = "tests/ui/models/missing_brace.cnn");

fn main() {}
