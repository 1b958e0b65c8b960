//! The cancel token: a set token stops compiling and every kind of run with
//! `JitError::Cancelled`; a cleared one runs step by step to the driver's results.

use crate::common::*;
use cnnc_jit::{CompiledModel, JitError, Options, StepArgs};
use cnnc_passes::{PassOptions, optimize};
use cnnc_runtime::Cancel;

#[test]
fn a_set_token_stops_compiling_running_and_timing_and_a_cleared_one_runs_as_the_driver() {
    let shape = [1, 32, 32];
    let g = lower_example("lenet5.cnn", &shape, &[]);
    let weights = random_weights(&g, 3);
    let x = batch_of(&shape, 2, 4);
    let plan = optimize(&g, Some(&weights), &PassOptions::all()).unwrap().plan;
    for mode in MODES {
        let cancel = Cancel::new();
        let options = Options::new(2).with_mode(mode).with_guard_pages(true).with_cancel(cancel.clone());
        cancel.request();
        assert_eq!(CompiledModel::compile(&plan, &options).err(), Some(JitError::Cancelled), "{mode:?}");
        cancel.clear();
        let model = CompiledModel::compile(&plan, &options).unwrap();
        model.load_weights(&weights).unwrap();
        let inputs = std::slice::from_ref(&x);
        let args = StepArgs::default();
        cancel.request();
        assert_eq!(model.forward(&x).err(), Some(JitError::Cancelled));
        assert_eq!(model.time_runs(inputs, &args, 3).err(), Some(JitError::Cancelled));
        assert_eq!(model.profile(inputs, &args, 3).err(), Some(JitError::Cancelled));
        let mut out = vec![0f32; 2 * 10];
        assert_eq!(model.forward_into(&[&x.data], &mut [&mut out]).err(), Some(JitError::Cancelled));
        cancel.clear();
        // Step by step, the same numbers as the generated driver of a model without a token.
        let stepped = model.forward(&x).unwrap();
        let driven = compile(&plan, 2, mode, &weights).forward(&x).unwrap();
        assert_eq!(stepped, driven, "{mode:?}");
        assert_eq!(model.time_runs(inputs, &args, 2).unwrap().len(), 2);
    }
}
