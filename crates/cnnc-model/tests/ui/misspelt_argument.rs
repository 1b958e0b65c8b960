cnnc_model::cnn! {
    model m {
        input x: [1, 8, 8]
        x -> conv(8, kernal=3) -> relu
    }
}

fn main() {}
