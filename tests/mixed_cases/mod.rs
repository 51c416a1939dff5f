//! The mixed-precision cases, generic over the backend: run on the CPU by `mixed_precision.rs`
//! and on CUDA by `cuda.rs`.
#![allow(dead_code)]

use crate::common::{fixture, reference};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor, TensorData};
use steermoe::model::loss::Targets;
use steermoe::model::{self, MoeLm, Precision, Routing};
use steermoe::train::Trainable;
use steermoe::train::freeze::freeze;
use steermoe::train::loader::SftBatch;
use steermoe::train::step::{LossSettings, sft_loss};

/// Compute and master types, learning rate, what the mixed updates are held to and the largest
/// relative difference allowed from it.
pub struct Setting {
    compute: Precision,
    master: FloatDType,
    lr: f64,
    reference: Reference,
    tolerance: f64,
}

/// What the updates of master weights are compared with.
pub enum Reference {
    /// The whole model in the master type: the gradients differ from the mixed run's by the
    /// compute type's rounding. Sharp where that rounding is far below the update (f32 compute).
    WholeModelInMaster,
    /// The same compute type with master weights of this wider type: the same forward passes and
    /// gradients, so the updates differ only by how the master weights hold them. With bf16
    /// compute, the rounding of the gradients flips the sign of AdamW's first steps wherever a
    /// gradient is near zero (up to 12% of an expert's elements on the fixture, H100,
    /// 2026-12-07), which a whole-model reference would count against the master weights.
    WiderMaster(FloatDType),
}

/// f32 compute, f64 master weights: what the CPU can show.
pub const CPU: Setting = Setting {
    compute: Precision::F32,
    master: FloatDType::F64,
    lr: 1e-10,
    reference: Reference::WholeModelInMaster,
    tolerance: 1e-3,
};
/// bf16 compute, f32 master weights, the real-model config's learning rate, held to f64 master
/// weights over the same bf16 compute.
#[cfg(feature = "cuda")]
pub const CUDA: Setting = Setting {
    compute: Precision::Bf16,
    master: FloatDType::F32,
    lr: 5e-5,
    reference: Reference::WiderMaster(FloatDType::F64),
    tolerance: 1e-2,
};

const STEPS: usize = 4;

/// Every float parameter as (dtype, whether it trains, f64 values), in visiting order.
struct Snapshot(Vec<(DType, bool, Vec<f64>)>);

impl<Bk: burn::tensor::backend::Backend> ModuleVisitor<Bk> for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let t = param.val();
        let values = t
            .to_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("float values");
        self.0.push((t.dtype(), t.is_require_grad(), values));
    }
}

fn snapshot<B: AutodiffBackend>(model: &MoeLm<B>) -> Vec<(DType, bool, Vec<f64>)> {
    let mut s = Snapshot(Vec::new());
    model.visit(&mut s);
    s.0
}

/// Every float parameter cast to one dtype.
struct CastAll(DType);

impl<Bk: burn::tensor::backend::Backend> ModuleMapper<Bk> for CastAll {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Bk, D>>) -> Param<Tensor<Bk, D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// The fixture's masked-loss ids as one language-modelling batch, free routing.
fn batch<B: AutodiffBackend>(device: &Device<B>) -> SftBatch<B> {
    let ids = reference(&fixture(), "masked.input_ids").i64();
    let n = ids.len();
    SftBatch {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), device),
        targets: Targets::from_labels(&ids, 1, n, device),
        attention_mask: Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true; n], [1, n]),
            device,
        ),
        batch_idx: 0,
        is_unsafe: vec![true],
        routing: Routing::free(),
        real: vec![true; n].into(),
        tokens: n - 1,
        input_tokens: n,
        step: 1,
        rank: steermoe::train::shard::Rank::SOLE,
        loss_scale: 1.0,
        phase: steermoe::train::Phase::Joint,
        skip: false,
    }
}

/// `STEPS` AdamW steps with the even-numbered experts of every layer trained in `master`.
fn train<B: AutodiffBackend>(
    model: MoeLm<B>,
    master: FloatDType,
    lr: f64,
    experts: &[[usize; 2]],
    batch: &SftBatch<B>,
) -> MoeLm<B> {
    let mut model = freeze(model, experts, Trainable::UnsafeExperts, master);
    let mut optim = AdamWConfig::new().init::<B, MoeLm<B>>();
    for _ in 0..STEPS {
        let loss = sft_loss(&model, &LossSettings::lm_only(), batch).loss;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
    }
    model
}

/// ‖a − b‖ / ‖b‖ over the trained tensors' updates, each tensor on its own; the largest.
fn worst_relative_difference(updates: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    updates
        .iter()
        .zip(reference)
        .filter(|(_, r)| r.iter().any(|&v| v != 0.0))
        .map(|(u, r)| {
            let diff: f64 = u.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum();
            let norm: f64 = r.iter().map(|b| b * b).sum();
            (diff / norm).sqrt()
        })
        .fold(0.0, f64::max)
}

/// ‖a − b‖ / ‖b‖ over every trained tensor's update together.
fn overall_relative_difference(updates: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    let (mut diff, mut norm) = (0.0, 0.0);
    for (u, r) in updates.iter().zip(reference) {
        diff += u.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        norm += r.iter().map(|b| b * b).sum::<f64>();
    }
    (diff / norm).sqrt()
}

/// The five trained tensors whose updates differ most from the reference's, on stderr: what a
/// failure names (tensor, elements, norms, the share of elements moved the other way).
fn report_worst(updates: &[Vec<f64>], reference: &[Vec<f64>]) {
    let mut rows: Vec<(f64, usize)> = updates
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|(_, (_, r))| r.iter().any(|&v| v != 0.0))
        .map(|(i, (u, r))| {
            (
                worst_relative_difference(std::slice::from_ref(u), std::slice::from_ref(r)),
                i,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for &(err, i) in rows.iter().take(5) {
        let (u, r) = (&updates[i], &reference[i]);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let flipped = u.iter().zip(r).filter(|(a, b)| **a * **b < 0.0).count();
        eprintln!(
            "trained tensor {i}: relative error {err:.3e}, {} elements, |update| {:.3e} vs reference {:.3e}, {flipped} moved the other way",
            r.len(),
            norm(u),
            norm(r)
        );
    }
}

fn updates(before: &[(DType, bool, Vec<f64>)], after: &[(DType, bool, Vec<f64>)]) -> Vec<Vec<f64>> {
    before
        .iter()
        .zip(after)
        .filter(|(_, (_, trains, _))| *trains)
        .map(|((_, _, b), (_, _, a))| a.iter().zip(b).map(|(a, b)| a - b).collect())
        .collect()
}

pub fn master_weights_move_as_the_reference<B: AutodiffBackend>(s: Setting, device: Device<B>) {
    let Setting {
        compute: precision,
        master: master_type,
        lr,
        reference,
        tolerance,
    } = s;
    let dir = fixture();
    let batch = batch::<B>(&device);
    let (model, cfg) = model::load::<B>(&dir, &device, precision).unwrap();
    let experts: Vec<[usize; 2]> = (0..cfg.num_moe_layers())
        .flat_map(|l| (0..cfg.num_experts).step_by(2).map(move |e| [l, e]))
        .collect();
    let master = DType::from(master_type);
    let compute = precision.dtype();
    let updates_of = |model: MoeLm<B>, master: FloatDType| {
        let before = snapshot(&freeze(
            model.clone(),
            &experts,
            Trainable::UnsafeExperts,
            master,
        ));
        updates(
            &before,
            &snapshot(&train(model, master, lr, &experts, &batch)),
        )
    };
    // The whole model in the master type: the reference on the CPU, reported beside the other.
    let whole = {
        let (wide, _) = model::load::<B>(&dir, &device, Precision::F32).unwrap();
        updates_of(wide.map(&mut CastAll(master)), master_type)
    };
    let reference = match reference {
        Reference::WholeModelInMaster => whole.clone(),
        Reference::WiderMaster(wider) => updates_of(model.clone(), wider),
    };

    let before = snapshot(&freeze(
        model.clone(),
        &experts,
        Trainable::UnsafeExperts,
        master_type,
    ));
    let after = snapshot(&train(model.clone(), master_type, lr, &experts, &batch));
    assert_eq!(before.len(), after.len());
    let mut frozen = 0;
    for (i, ((dtype, trains, b), (dtype_after, _, a))) in before.iter().zip(&after).enumerate() {
        match trains {
            true => assert_eq!(
                (*dtype, *dtype_after),
                (master, master),
                "trained parameter {i} not kept in {master:?}"
            ),
            false => {
                assert_eq!(
                    (*dtype, *dtype_after),
                    (compute, compute),
                    "frozen parameter {i} changed dtype"
                );
                assert!(a == b, "frozen parameter {i} changed");
                frozen += 1;
            }
        }
    }
    assert!(frozen > 0);
    let mixed = updates(&before, &after);
    assert_eq!(mixed.len(), 3 * experts.len());
    let mixed_error = worst_relative_difference(&mixed, &reference);

    // Control: the trained experts kept in the compute type.
    let control = updates_of(model, FloatDType::from(compute));
    let control_error = worst_relative_difference(&control, &reference);
    eprintln!(
        "{precision:?} compute, {master_type:?} master, lr {lr:e}, {STEPS} steps: worst relative update error {mixed_error:.3e} with master weights, {control_error:.3e} without"
    );
    // Against the whole model in the master type: all trained tensors as one vector.
    let (mixed_whole, control_whole) = (
        overall_relative_difference(&mixed, &whole),
        overall_relative_difference(&control, &whole),
    );
    eprintln!(
        "against the whole model in {master_type:?}: relative update error {mixed_whole:.3e} with master weights, {control_whole:.3e} without"
    );
    report_worst(&mixed, &whole);
    assert!(
        mixed_error <= tolerance,
        "updates with master weights differ from the reference by {mixed_error:.3e} (> {tolerance:e})"
    );
    // The control must fail the check the master weights pass.
    assert!(
        control_error > tolerance,
        "without master weights the updates should round away: error {control_error:.3e} (≤ {tolerance:e})"
    );
    assert!(
        mixed_whole < control_whole,
        "master weights should bring the updates nearer the whole model's: {mixed_whole:.3e} vs {control_whole:.3e} without"
    );
}

/// A checkpoint holds f32 (burn's records load as the backend's default float type): loading one
/// into a frozen model must leave every parameter in the dtype it had, master weights included.
pub fn loaded_checkpoint_keeps_dtypes<B: AutodiffBackend>(s: Setting, device: Device<B>) {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let (model, cfg) = model::load::<B>(&fixture(), &device, s.compute).unwrap();
    let experts: Vec<[usize; 2]> = (0..cfg.num_experts).map(|e| [0, e]).collect();
    let model = freeze(model, &experts, Trainable::UnsafeExperts, s.master);
    let before = snapshot(&model);
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let bytes = recorder.record(model.clone().into_record(), ()).unwrap();
    let loaded = model.load_record(recorder.load(bytes, &device).unwrap());
    let after = snapshot(&loaded);
    let dtypes =
        |s: &[(DType, bool, Vec<f64>)]| s.iter().map(|(d, t, _)| (*d, *t)).collect::<Vec<_>>();
    assert_eq!(dtypes(&after), dtypes(&before));
    assert!(
        before
            .iter()
            .any(|(d, t, _)| *t && *d == DType::from(s.master))
    );
    assert!(
        before
            .iter()
            .any(|(d, t, _)| !*t && *d == s.compute.dtype())
    );
}
