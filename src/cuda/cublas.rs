//! cuBLAS GEMMs on device pointers that burn's CUDA backend owns.
//!
//! cubecl and cudarc share the device's primary context, so a pointer from cubecl's memory is
//! valid for cuBLAS. Where the operands' memory says which of cubecl's streams owns it (the
//! patched cubecl-cuda in `vendor/`), [`Order::Stream`] issues the GEMMs on that stream, in order
//! with burn's kernels, and nothing waits. [`Order::Synchronised`] is the fallback: wait for the
//! whole context (every kernel cubecl has issued, which includes everything these GEMMs read), run
//! the GEMMs on cuBLAS's own stream and wait for them, so that cubecl's later kernels see the
//! results. One handle per device, behind a lock.
//!
//! [`Cublas::gemm_grouped`] runs many GEMMs of different sizes as one `cublasGemmGroupedBatchedEx`
//! call, whose operand addresses cuBLAS reads from device memory: they are staged in pinned host
//! memory and copied in stream order, each staging buffer reused once an event says its copy and
//! GEMMs have run.

use std::ffi::c_void;
use std::sync::Mutex;

use burn::tensor::DType;
use cudarc::cublas::{result as cublas, sys as blas};
use cudarc::driver::{result as driver, sys as cu};

/// One operand of a GEMM: a row-major `[rows, cols]` view of device memory, with element strides.
#[derive(Debug, Clone, Copy)]
pub struct Mat {
    /// Device address of element `[0, 0]`.
    pub ptr: u64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Elements between rows.
    pub row_stride: usize,
    /// Elements between columns.
    pub col_stride: usize,
}

impl Mat {
    /// A contiguous row-major matrix.
    pub fn contiguous(ptr: u64, rows: usize, cols: usize) -> Self {
        Self {
            ptr,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Rows `start..start + rows`, `elem` bytes per element.
    pub fn rows(self, start: usize, rows: usize, elem: usize) -> Self {
        Self {
            ptr: self.ptr + (start * self.row_stride * elem) as u64,
            rows,
            ..self
        }
    }

    /// The transpose (a view: no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether cuBLAS can read this view in place (see [`Mat::as_transposed_operand`]): one axis
    /// unit-stride, the other at least as wide as the first. Otherwise copy it contiguous first.
    pub fn readable(&self) -> bool {
        self.as_transposed_operand().is_some()
    }

    /// How cuBLAS (column-major) reads this matrix *transposed*: the operation and leading
    /// dimension, or `None` when neither dimension is unit-stride.
    fn as_transposed_operand(&self) -> Option<(blas::cublasOperation_t, i32)> {
        // Row-major with unit column stride is, read column-major, the transpose itself.
        if self.col_stride == 1 && self.row_stride >= self.cols.max(1) {
            Some((blas::cublasOperation_t::CUBLAS_OP_N, self.row_stride as i32))
        } else if self.row_stride == 1 && self.col_stride >= self.rows.max(1) {
            Some((blas::cublasOperation_t::CUBLAS_OP_T, self.col_stride as i32))
        } else {
            None
        }
    }
}

/// Why a GEMM could not run.
#[derive(Debug, thiserror::Error)]
pub enum CublasError {
    /// The CUDA driver or cuBLAS failed (or libcublas could not be loaded).
    #[error("cuBLAS on device {device}: {what}: {reason}")]
    Call {
        /// The device ordinal.
        device: usize,
        /// What was being done.
        what: &'static str,
        /// The library's error.
        reason: String,
    },
    /// An operand has no unit stride.
    #[error("GEMM operand {0:?} is not contiguous in either dimension")]
    Layout(Mat),
    /// A dtype cuBLAS is not asked to handle here.
    #[error("no cuBLAS GEMM for {0:?}")]
    Dtype(DType),
}

/// A pinned host buffer and a device buffer for one grouped call's operand addresses, free for
/// reuse once `event` (recorded after the call) has completed.
struct Staging {
    host: *mut u64,
    device: cu::CUdeviceptr,
    words: usize,
    event: cu::CUevent,
}

struct Handle {
    device: usize,
    /// Staging buffers of [`Cublas::gemm_grouped`], allocated as needed and never freed.
    staging: std::cell::RefCell<Vec<Staging>>,
    ctx: cu::CUcontext,
    /// cuBLAS's own stream, for [`Order::Synchronised`].
    stream: cu::CUstream,
    /// The stream the handle is set to now.
    current: cu::CUstream,
    blas: blas::cublasHandle_t,
}

/// Where one batch of GEMMs runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// On this stream of cubecl's, which owns every operand: ordered with burn's kernels by the
    /// stream itself, so nothing waits.
    Stream(cu::CUstream),
    /// After every kernel of the device, on cuBLAS's own stream, and waited for.
    Synchronised,
}

// SAFETY: the raw handles are only used while `HANDLES` is locked, with the context made current.
unsafe impl Send for Handle {}

static HANDLES: Mutex<Vec<Handle>> = Mutex::new(Vec::new());

/// Where the time of [`Cublas::run`] went, summed over the process (for the GPU bench's profile).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Stats {
    /// Synchronised batches of GEMMs ([`Order::Synchronised`]).
    pub calls: u64,
    /// Batches of GEMMs issued on burn's stream ([`Order::Stream`]).
    pub stream_calls: u64,
    /// GEMMs launched.
    pub gemms: u64,
    /// Seconds waiting for burn's kernels before the GEMMs.
    pub wait_s: f64,
    /// Seconds from the first GEMM's launch to the last one's end.
    pub gemm_s: f64,
    /// cuBLAS calls made (a grouped call counts once, however many GEMMs it runs).
    pub launches: u64,
}

static STATS: Mutex<Stats> = Mutex::new(Stats {
    calls: 0,
    stream_calls: 0,
    gemms: 0,
    wait_s: 0.0,
    gemm_s: 0.0,
    launches: 0,
});

/// The time spent in cuBLAS so far, and reset.
pub fn take_stats() -> Stats {
    std::mem::take(&mut *STATS.lock().unwrap_or_else(|p| p.into_inner()))
}

fn call<T, E: std::fmt::Debug>(
    device: usize,
    what: &'static str,
    r: Result<T, E>,
) -> Result<T, CublasError> {
    r.map_err(|e| CublasError::Call {
        device,
        what,
        reason: format!("{e:?}"),
    })
}

impl Handle {
    fn new(device: usize) -> Result<Self, CublasError> {
        call(device, "driver init", driver::init())?;
        let dev = call(device, "device", driver::device::get(device as i32))?;
        // SAFETY: `dev` is a valid device; the primary context is the one cubecl uses.
        let ctx = call(device, "primary context", unsafe {
            driver::primary_ctx::retain(dev)
        })?;
        call(device, "set context", unsafe {
            driver::ctx::set_current(ctx)
        })?;
        let stream = call(
            device,
            "stream",
            driver::stream::create(driver::stream::StreamKind::NonBlocking),
        )?;
        let blas = call(
            device,
            "create handle (is libcublas.so.13 on the library path?)",
            cublas::create_handle(),
        )?;
        // SAFETY: both handles were just created and are valid.
        call(device, "set stream", unsafe {
            cublas::set_stream(blas, stream as blas::cudaStream_t)
        })?;
        Ok(Self {
            device,
            staging: std::cell::RefCell::new(Vec::new()),
            ctx,
            stream,
            current: stream,
            blas,
        })
    }

    /// Point the handle at `stream` (resetting cuBLAS's workspace, so only when it changes).
    fn use_stream(&mut self, stream: cu::CUstream) -> Result<(), CublasError> {
        if self.current != stream {
            // SAFETY: the handle is valid and `stream` is a live stream of this context.
            call(self.device, "set stream", unsafe {
                cublas::set_stream(self.blas, stream as blas::cudaStream_t)
            })?;
            self.current = stream;
        }
        Ok(())
    }
}

/// The work of one batch of GEMMs on one device.
pub struct Cublas<'a> {
    handle: &'a Handle,
    gemms: std::cell::Cell<u64>,
    launches: std::cell::Cell<u64>,
}

impl Cublas<'_> {
    /// Run `work`'s GEMMs on `device` in the given [`Order`].
    pub fn run<T>(
        device: usize,
        order: Order,
        work: impl FnOnce(&Cublas) -> Result<T, CublasError>,
    ) -> Result<T, CublasError> {
        let mut handles = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
        if !handles.iter().any(|h| h.device == device) {
            handles.push(Handle::new(device)?);
        }
        let handle = handles
            .iter_mut()
            .find(|h| h.device == device)
            .expect("just added");
        // SAFETY: the context is valid for the process's lifetime (retained, never released).
        call(device, "set context", unsafe {
            driver::ctx::set_current(handle.ctx)
        })?;
        let start = std::time::Instant::now();
        match order {
            Order::Stream(stream) => handle.use_stream(stream)?,
            Order::Synchronised => {
                handle.use_stream(handle.stream)?;
                call(
                    device,
                    "wait for burn's kernels",
                    driver::ctx::synchronize(),
                )?;
            }
        }
        let waited = start.elapsed();
        let blas = Cublas {
            handle,
            gemms: std::cell::Cell::new(0),
            launches: std::cell::Cell::new(0),
        };
        let out = work(&blas)?;
        let (gemms, launches) = (blas.gemms.get(), blas.launches.get());
        if order == Order::Synchronised {
            // SAFETY: the stream is valid.
            call(device, "wait for cuBLAS", unsafe {
                driver::stream::synchronize(handle.stream)
            })?;
        }
        let mut stats = STATS.lock().unwrap_or_else(|p| p.into_inner());
        stats.gemms += gemms;
        stats.launches += launches;
        match order {
            Order::Stream(_) => stats.stream_calls += 1,
            Order::Synchronised => {
                stats.calls += 1;
                stats.wait_s += waited.as_secs_f64();
                stats.gemm_s += (start.elapsed() - waited).as_secs_f64();
            }
        }
        Ok(out)
    }

    /// Zero `bytes` bytes at `ptr` (stream-ordered with the GEMMs).
    pub fn zero(&self, ptr: u64, bytes: usize) -> Result<(), CublasError> {
        // SAFETY: the caller owns `bytes` bytes at `ptr`.
        call(self.handle.device, "memset", unsafe {
            driver::memset_d8_async(ptr, 0, bytes, self.handle.current)
        })
    }

    /// `c = a · b` (`c` contiguous, overwritten), all in `dtype`, accumulated in f32 (TF32 tensor
    /// cores for f32 operands, as burn's f32 matmul on CUDA).
    ///
    /// # Safety
    /// Every pointer must address device memory of the views' extent that stays alive until the
    /// GEMM has run (until [`Cublas::run`] returns for [`Order::Synchronised`]; for
    /// [`Order::Stream`], memory the stream's own pool owns, which it reuses only in stream
    /// order), and `c` must not overlap `a` or `b`.
    pub unsafe fn gemm(&self, dtype: DType, a: Mat, b: Mat, c: Mat) -> Result<(), CublasError> {
        let Some(ColMajor {
            ops: [op_b, op_a],
            mnk: [n, m, k],
            ld: [ld_b, ld_a, ld_c],
            ptrs: [b_ptr, a_ptr, c_ptr],
        }) = self.column_major(dtype, a, b, c, 1)?
        else {
            return Ok(());
        };
        let (data, compute) = gemm_types(dtype)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the caller guarantees the pointers; sizes and leading dimensions match the views.
        let r = unsafe {
            cublas::gemm_ex(
                self.handle.blas,
                op_b,
                op_a,
                n,
                m,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                b_ptr as *const c_void,
                data,
                ld_b,
                a_ptr as *const c_void,
                data,
                ld_a,
                (&beta as *const f32).cast::<c_void>(),
                c_ptr as *mut c_void,
                data,
                ld_c,
                compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        };
        self.gemms.set(self.gemms.get() + 1);
        self.launches.set(self.launches.get() + 1);
        call(self.handle.device, "gemm_ex", r)
    }

    /// `c_i = a_i · b_i` for `i < batch`, in one `cublasGemmStridedBatchedEx` call: `a`, `b`,
    /// `c` are the views of item 0 (as in [`Cublas::gemm`]) and item `i` lies `i · strides[_]`
    /// elements further on. float32 is computed in full float32 ([`gemm_types_exact`]).
    ///
    /// # Safety
    /// As [`Cublas::gemm`], for every item; the items of `c` must not overlap.
    pub unsafe fn gemm_strided_batched(
        &self,
        dtype: DType,
        a: Mat,
        b: Mat,
        c: Mat,
        batch: usize,
        strides: [usize; 3],
    ) -> Result<(), CublasError> {
        debug_assert_eq!(strides[2], c.rows * c.cols, "the items of c are contiguous");
        let Some(ColMajor {
            ops: [op_b, op_a],
            mnk: [n, m, k],
            ld: [ld_b, ld_a, ld_c],
            ptrs: [b_ptr, a_ptr, c_ptr],
        }) = self.column_major(dtype, a, b, c, batch)?
        else {
            return Ok(());
        };
        let (data, compute) = gemm_types_exact(dtype)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let [stride_a, stride_b, stride_c] = strides.map(|s| s as i64);
        // SAFETY: the caller guarantees the pointers; sizes, leading dimensions and batch strides
        // match the views.
        let r = unsafe {
            cublas::gemm_strided_batched_ex(
                self.handle.blas,
                op_b,
                op_a,
                n,
                m,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                b_ptr as *const c_void,
                data,
                ld_b,
                stride_b,
                a_ptr as *const c_void,
                data,
                ld_a,
                stride_a,
                (&beta as *const f32).cast::<c_void>(),
                c_ptr as *mut c_void,
                data,
                ld_c,
                stride_c,
                batch as i32,
                compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        };
        self.gemms.set(self.gemms.get() + batch as u64);
        self.launches.set(self.launches.get() + 1);
        call(self.handle.device, "gemm_strided_batched_ex", r)
    }

    /// `c = a · b` for every `(a, b, c)` of `problems` (each as in [`Cublas::gemm`]), in one
    /// `cublasGemmGroupedBatchedEx` call with one group per GEMM (cuBLAS ≥ 12.5).
    ///
    /// # Safety
    /// As [`Cublas::gemm`], for every problem; no `c` may overlap another problem's operands.
    pub unsafe fn gemm_grouped(
        &self,
        dtype: DType,
        problems: &[(Mat, Mat, Mat)],
    ) -> Result<(), CublasError> {
        let device = self.handle.device;
        let (data, compute) = gemm_types(dtype)?;
        let mut g = Grouped::default();
        for &(a, b, c) in problems {
            if let Some(p) = self.column_major(dtype, a, b, c, 1)? {
                g.push(p);
            }
        }
        let groups = g.m.len();
        if groups == 0 {
            return Ok(());
        }
        // The operand addresses, [A… | B… | C…], copied to the device in stream order.
        let words: Vec<u64> = g.ptrs.iter().flat_map(|p| p.iter().copied()).collect();
        let (slot, dev) = self.stage(&words)?;
        let ptr = |i: usize| (dev + (i * groups * 8) as u64) as *const *const c_void;
        let (alpha, beta) = (vec![1.0f32; groups], vec![0.0f32; groups]);
        let sizes = vec![1i32; groups];
        // SAFETY: the caller guarantees the operands; the address arrays were copied to `dev` on
        // this stream before the call; the host arrays live until it returns.
        let r = unsafe {
            blas::cublasGemmGroupedBatchedEx(
                self.handle.blas,
                g.ops[0].as_ptr(),
                g.ops[1].as_ptr(),
                g.m.as_ptr(),
                g.n.as_ptr(),
                g.k.as_ptr(),
                alpha.as_ptr().cast::<c_void>(),
                ptr(0),
                data,
                g.ld[0].as_ptr(),
                ptr(1),
                data,
                g.ld[1].as_ptr(),
                beta.as_ptr().cast::<c_void>(),
                ptr(2) as *const *mut c_void,
                data,
                g.ld[2].as_ptr(),
                groups as i32,
                sizes.as_ptr(),
                compute,
            )
            .result()
        };
        call(device, "cublasGemmGroupedBatchedEx", r)?;
        // SAFETY: the event and the stream are valid; the slot is free again once it completes.
        let staging = self.handle.staging.borrow();
        call(device, "record event", unsafe {
            driver::event::record(staging[slot].event, self.handle.current)
        })?;
        self.gemms.set(self.gemms.get() + groups as u64);
        self.launches.set(self.launches.get() + 1);
        Ok(())
    }

    /// `c = a · b` as cuBLAS's column-major call takes it, or `None` when there is nothing to
    /// multiply (`c` empty, or zeroed here when the inner dimension is 0: `items` contiguous
    /// outputs of `c`'s shape from `c.ptr` on, for a batched call). Row-major C = A·B is
    /// column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS's first operand is Bᵀ, its second Aᵀ.
    fn column_major(
        &self,
        dtype: DType,
        a: Mat,
        b: Mat,
        c: Mat,
        items: usize,
    ) -> Result<Option<ColMajor>, CublasError> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        debug_assert_eq!(b.rows, k);
        debug_assert_eq!((c.rows, c.cols, c.row_stride, c.col_stride), (m, n, n, 1));
        if m == 0 || n == 0 || items == 0 {
            return Ok(None);
        }
        gemm_types(dtype)?;
        if k == 0 {
            self.zero(c.ptr, items * m * n * dtype.size())?;
            return Ok(None);
        }
        let (op_b, ld_b) = b.as_transposed_operand().ok_or(CublasError::Layout(b))?;
        let (op_a, ld_a) = a.as_transposed_operand().ok_or(CublasError::Layout(a))?;
        Ok(Some(ColMajor {
            ops: [op_b, op_a],
            mnk: [n, m, k].map(|v| v as i32),
            ld: [ld_b, ld_a, n as i32],
            ptrs: [b.ptr, a.ptr, c.ptr],
        }))
    }

    /// Copy `words` to device memory in stream order, through a free staging buffer; returns the
    /// buffer's index (record its event after the work that reads it) and device address.
    fn stage(&self, words: &[u64]) -> Result<(usize, cu::CUdeviceptr), CublasError> {
        let device = self.handle.device;
        let mut staging = self.handle.staging.borrow_mut();
        // SAFETY: the events are valid; a query does not block.
        let free = staging.iter().position(|s| {
            s.words >= words.len() && unsafe { driver::event::query(s.event) }.is_ok()
        });
        let slot = match free {
            Some(slot) => slot,
            None => {
                let words = words.len().max(2048);
                // SAFETY: plain allocations of `words` u64s on the current context.
                let host = call(device, "pinned staging buffer", unsafe {
                    driver::malloc_host(words * 8, 0)
                })?
                .cast::<u64>();
                let dev = call(device, "device staging buffer", unsafe {
                    driver::malloc_sync(words * 8)
                })?;
                let event = call(
                    device,
                    "event",
                    driver::event::create(cu::CUevent_flags::CU_EVENT_DISABLE_TIMING),
                )?;
                staging.push(Staging {
                    host,
                    device: dev,
                    words,
                    event,
                });
                staging.len() - 1
            }
        };
        let s = &staging[slot];
        // SAFETY: the pinned buffer holds `s.words` ≥ `words.len()` u64s and no copy reads it now
        // (its event completed); the device buffer is as large.
        unsafe {
            std::ptr::copy_nonoverlapping(words.as_ptr(), s.host, words.len());
            let host = std::slice::from_raw_parts(s.host, words.len());
            call(
                device,
                "copy operand addresses",
                driver::memcpy_htod_async(s.device, host, self.handle.current),
            )?;
        }
        Ok((slot, s.device))
    }
}

/// The per-group arrays of one grouped call (cuBLAS's column-major operands).
#[derive(Default)]
struct Grouped {
    ops: [Vec<blas::cublasOperation_t>; 2],
    m: Vec<i32>,
    n: Vec<i32>,
    k: Vec<i32>,
    ld: [Vec<i32>; 3],
    ptrs: [Vec<u64>; 3],
}

/// One GEMM as cuBLAS takes it: the two operands' operations, m, n, k, the three leading
/// dimensions and the three addresses (first operand, second, output).
struct ColMajor {
    ops: [blas::cublasOperation_t; 2],
    mnk: [i32; 3],
    ld: [i32; 3],
    ptrs: [u64; 3],
}

impl Grouped {
    fn push(
        &mut self,
        ColMajor {
            ops,
            mnk: [m, n, k],
            ld,
            ptrs,
        }: ColMajor,
    ) {
        (0..2).for_each(|i| self.ops[i].push(ops[i]));
        self.m.push(m);
        self.n.push(n);
        self.k.push(k);
        (0..3).for_each(|i| self.ld[i].push(ld[i]));
        (0..3).for_each(|i| self.ptrs[i].push(ptrs[i]));
    }
}

/// Whether the loaded cuBLAS has `cublasGemmGroupedBatchedEx` (cuBLAS 12.5 and later; cudarc
/// may load an older `libcublas.so`, where calling it would panic on the missing symbol).
pub fn has_grouped_gemm() -> bool {
    // SAFETY: loading the library runs no code of ours; looking a symbol up calls nothing.
    unsafe {
        blas::is_culib_present()
            && blas::culib()
                .get::<unsafe extern "C" fn()>(b"cublasGemmGroupedBatchedEx\0")
                .is_ok()
    }
}

/// cuBLAS's data and compute types for `dtype`: f32 accumulation, TF32 tensor cores for f32.
fn gemm_types(
    dtype: DType,
) -> Result<(blas::cudaDataType, blas::cublasComputeType_t), CublasError> {
    Ok(match dtype {
        DType::BF16 => (
            blas::cudaDataType::CUDA_R_16BF,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        DType::F16 => (
            blas::cudaDataType::CUDA_R_16F,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        DType::F32 => (
            blas::cudaDataType::CUDA_R_32F,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        ),
        other => return Err(CublasError::Dtype(other)),
    })
}

/// [`gemm_types`] with float32 computed in full float32 (no TF32): attention's scores, which the
/// softmax's exponential turns small rounding into large weight changes for (TF32 scores flipped
/// a near-tied argmax of the CUDA parity suite that burn's kernel for these shapes kept).
fn gemm_types_exact(
    dtype: DType,
) -> Result<(blas::cudaDataType, blas::cublasComputeType_t), CublasError> {
    Ok(match dtype {
        DType::F32 => (
            blas::cudaDataType::CUDA_R_32F,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        other => gemm_types(other)?,
    })
}
