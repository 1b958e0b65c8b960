// The warnings of a model are deprecation warnings at their tokens; denied here to pin them.
#![deny(deprecated)]

cnnc_model::cnn! {
    model m {
        input x: [1, 7, 7]
        x -> conv(4, k=3, stride=3) -> flatten
    }
}

fn main() {}
