cnnc_model::cnn! {
    model m {
        input x: [3, 5, 5]
        x -> conv(8, k=7) -> relu
    }
}

fn main() {}
