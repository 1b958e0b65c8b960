//! The generated `Model` of every test case against the reference interpreter (the source
//! graph, run logically): forward at batch 1 and 3 within rtol 1e-4 (at batch 3 also depth
//! first), weights loaded from named tensors, from safetensors bytes and from a seed.

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
            // Depth first: every layer that can, image by image (at these sizes the default
            // threshold keeps whole batches).
            // The module's rule is cnnc_ir::depth's, for every batch and threshold.
            let plan = models::inference(&g);
            for limit in [0, 1 << 12, 1 << 16, 1 << 20, cnnc_ir::depth::DEPTH_FIRST_BYTES, u64::MAX] {
                let m = Model::from_tensors(&named(&weights)).expect("weights load").with_depth_first_bytes(limit);
                for batch in [1, 2, 3, 8, 64] {
                    let want = cnnc_ir::depth::depth_first_prefix(&plan, batch, limit);
                    assert_eq!(m.depth_first_nodes(batch), want, "{}: batch {batch}, {limit} bytes", stringify!($module));
                }
            }
            let model = model.with_depth_first_bytes(0);
            let nodes = model.depth_first_nodes(3);
            // The pyramid and the heads cases begin with pooling layers that take images
            // apart from maps (spatial pyramid, adaptive): nothing before them to run so.
            let none = matches!(stringify!($module), "pyramid" | "heads");
            assert_eq!(nodes == 0, none, "{}: {nodes} nodes depth first", stringify!($module));
            let x = input(&g, 3, 13);
            let want = reference_forward(&g, &weights, &x);
            let mut out = vec![f32::NAN; want[0].data.len()];
            model.forward(&x.data, 3, &mut out).expect("forward runs");
            assert_close(&format!("{} depth first through {nodes} nodes", stringify!($module)), &out, &want[0].data, RTOL);
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

/// The core-only LeNet-5: parameters in the caller's storage, the caller's workspace of
/// `workspace_len(batch)` floats (`WORKSPACE_LEN` for one image), the same numbers as the
/// std module; short storage or workspace is an error.
#[test]
fn lenet5_no_std() {
    use cnnc_codegen_generated::lenet5_no_std::{Error, Model, model};
    let case = case("lenet5");
    let g = models::lower(&case);
    let weights = random_weights(&g, 7);
    let dir = std::env::temp_dir().join(format!("cnnc-codegen-no-std-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    cnnc_runtime::save_safetensors(&path, &weights).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut storage = vec![0.0; model::STORAGE_LEN];
    assert!(matches!(
        Model::from_safetensors(&bytes, &mut storage[1..]).err(),
        Some(Error::Length { what: "parameter storage", .. })
    ));
    let model = Model::from_safetensors(&bytes, &mut storage).expect("weights load");
    assert_eq!(model::workspace_len(1), Ok(model::WORKSPACE_LEN));
    for (batch, seed) in [(1, 11), (3, 12)] {
        let x = input(&g, batch, seed);
        let want = reference_forward(&g, &weights, &x);
        let mut out = vec![f32::NAN; want[0].data.len()];
        let mut workspace = vec![f32::NAN; model::workspace_len(batch).unwrap()];
        let short = workspace.len() - 1;
        assert!(matches!(
            model.forward(&x.data, batch, &mut out, &mut workspace[..short]),
            Err(Error::Length { what: "workspace", .. })
        ));
        model.forward(&x.data, batch, &mut out, &mut workspace).expect("forward runs");
        assert_close(&format!("lenet5 without std at batch {batch}"), &out, &want[0].data, RTOL);
    }
}
