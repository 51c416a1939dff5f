//! cuBLAS work queued on cubecl's device thread: the thread that launches every kernel of burn's
//! CUDA backend, so that work queued there runs in order with those kernels.
//!
//! A GEMM operation of burn's fusion stream ([`grouped`](super::grouped),
//! [`batched`](super::batched)) allocates its output, then queues one task here that looks up its
//! operands' device addresses and issues the cuBLAS calls — and does not wait for it: the fusion
//! thread goes on with the next operations while the device thread works through its queue.
//! (Waiting, as `ComputeClient::exclusive` does, made every GEMM operation a round trip that
//! drained the device thread's queue first: 113 a decode step, 253 a train step at the
//! OLMoE-1B-7B shape.)

use std::sync::Mutex;

use burn_cubecl::cubecl::Runtime;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::cubecl::device::Device;
use burn_cubecl::cubecl::device_handle::DeviceHandle;
use burn_cubecl::cubecl::server::{Binding, ComputeServer};
use burn_cubecl::cubecl::stream_id::StreamId;

use super::cublas::{CublasError, Order};

/// cubecl's CUDA compute server: the state of its device thread.
type Server = <CudaRuntime as Runtime>::Server;

/// Queue `work` on `device`'s device thread, after every kernel launched so far: it gets the
/// device address of each of `operands` (in order) and the order to issue cuBLAS calls in (on
/// the stream that owns them all, or synchronised where they live on different streams). The
/// bindings keep the memory alive until the task has issued its calls, which the stream then
/// orders before any later reuse of that memory.
///
/// Nothing waits for the task, so an error cannot be returned to the caller: its output would
/// hold no result and every later result would be wrong. The process stops, saying what failed.
pub fn submit(
    device: &CudaDevice,
    what: &'static str,
    operands: Vec<Binding>,
    work: impl FnOnce(&[u64], Order) -> Result<(), CublasError> + Send + 'static,
) {
    let stream_id = StreamId::current();
    let index = device.index;
    queue(device).submit(move |server: &mut Server| {
        let run = || -> Result<(), CublasError> {
            // On the device thread every kernel queued before this task has been issued.
            let resources = operands
                .into_iter()
                .map(|b| {
                    server
                        .get_resource(b, stream_id)
                        .map_err(|e| CublasError::Call {
                            device: index,
                            what: "device address",
                            reason: format!("{e:?}"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ptrs: Vec<u64> = resources.iter().map(|r| r.resource().ptr).collect();
            let stream = resources.first().map(|r| r.resource().stream);
            let order = match stream {
                Some(s) if resources.iter().all(|r| r.resource().stream == s) => Order::Stream(s),
                _ => Order::Synchronised,
            };
            work(&ptrs, order)
        };
        if let Err(e) = run() {
            eprintln!("error: {what} on CUDA device {index} failed: {e}");
            tracing::error!("{what} on CUDA device {index} failed: {e}");
            std::process::abort();
        }
    });
}

/// The task queue of `device`'s device thread, looked up once per device.
fn queue(device: &CudaDevice) -> DeviceHandle<Server> {
    static QUEUES: Mutex<Vec<(usize, DeviceHandle<Server>)>> = Mutex::new(Vec::new());
    let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, q)) = queues.iter().find(|(i, _)| *i == device.index) {
        return q.clone();
    }
    // burn's client for this device exists (the operands live on it), so this joins its
    // thread's queue rather than starting a server.
    let q = DeviceHandle::<Server>::new(device.to_id());
    queues.push((device.index, q.clone()));
    q
}
