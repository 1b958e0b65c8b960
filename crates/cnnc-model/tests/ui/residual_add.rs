cnnc_model::cnn! {
    /// A residual block whose shortcut does not match: the branch has 16 channels.
    model broken {
        input x: [3, 32, 32]
        let y = x -> conv(16, k=3, pad=1) -> relu
        add(x, y)
    }
}

fn main() {}
