cnnc_model::cnn!(file = "../../examples/lenet5.cnn", trian = sgd);

fn main() {}
