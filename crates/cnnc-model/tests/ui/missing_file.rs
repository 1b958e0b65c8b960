cnnc_model::cnn!(file = "models/no_such_model.cnn");

fn main() {}
