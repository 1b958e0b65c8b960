//! The generated `Model` of every test case against the reference interpreter (the source
//! graph, run logically): forward at batch 1 and 3 within rtol 1e-4, weights loaded from
//! named tensors, from safetensors bytes and from a seed.

mod common;

use common::*;

const RTOL: f64 = 1e-4;

macro_rules! forward {
    ($($module:ident),* $(,)?) => {$(
        #[test]
        fn $module() {
            use cnnc_codegen_generated::$module::Model;
            let case = case(stringify!($module));
            let g = models::lower(&case);
            let weights = random_weights(&g, 7);
            let model = Model::from_tensors(&named(&weights)).expect("weights load");
            for (batch, seed) in [(1, 11), (3, 12)] {
                let x = input(&g, batch, seed);
                let want = reference_forward(&g, &weights, &x);
                let mut out = vec![f32::NAN; want[0].data.len()];
                model.forward(&x.data, batch, &mut out).expect("forward runs");
                assert_close(&format!("{} at batch {batch}", stringify!($module)), &out, &want[0].data, RTOL);
            }
        }
    )*};
}

forward!(
    lenet5,
    cifar_simple,
    allcnnc,
    resnet18,
    vgg11,
    inception,
    tiny_resnet,
    activations,
    pools,
    ceil_pools,
    pyramid,
    norms,
    mobile,
    heads,
    conv_zoo,
    mlp,
);
