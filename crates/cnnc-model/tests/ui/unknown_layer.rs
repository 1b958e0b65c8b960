cnnc_model::cnn! {
    model m {
        input x: [1, 8, 8]
        x -> convv(8, k=3) -> relu
    }
}

fn main() {}
