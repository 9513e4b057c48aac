//! Subnormal floats, flushed: flush-to-zero and denormals-are-zero in every thread that computes.
//!
//! Intel cores take a microcode assist, about a hundred cycles, for each subnormal operand or
//! result of an SSE/AVX instruction. Fine-tuning's gradients are full of them: on a Sapphire
//! Rapids Xeon, fine-tuning MiniLM ran at 0.3-0.4 sequences/s with the default floating-point
//! environment (issue 17's report) and at 8-12 with FTZ/DAZ; a product with a subnormal operand
//! took 116x as long (docs/PERFORMANCE.md, "Subnormal floats"). AMD Zen handles subnormals at
//! full speed, so only Intel machines show it.
//!
//! FTZ writes zero for a result below `f32::MIN_POSITIVE` (1.18e-38), DAZ reads such an operand
//! as zero; nothing else changes. PyTorch and ONNX Runtime offer the same setting
//! (`torch.set_flush_denormal(True)`, ORT's `session.set_denormal_as_zero`).
//!
//! The setting is a per-thread register (MXCSR on x86-64, FPCR on aarch64), and a new thread
//! starts with its creator's. So:
//! - the binary sets it in its main thread before any other thread exists (after the malloc
//!   settings, which must also come first), and every thread it starts inherits it, rayon's
//!   global pool included, whichever thread starts that;
//! - the library entry points that compute on burn's CPU backend (the training step,
//!   fine-tuning's model loading) call [`flush_denormals`], for programs and tests that use
//!   bertkit as a library from threads of their own; loading a plan sets the calling thread;
//! - rayon's global pool (burn's CPU backend and gemm compute there) may have been started
//!   before, by whoever first used it: [`flush_denormals`] sets it in each of its threads once;
//! - the pools bertkit starts itself come from [`thread_pool`], which sets it as each thread
//!   starts, whatever thread builds the pool.

use std::sync::Once;

/// Sets flush-to-zero and denormals-are-zero in the calling thread, and (once per process) in
/// every thread of rayon's global pool. Cheap to call again.
pub fn flush_denormals() {
    set_in_this_thread();
    static GLOBAL_POOL: Once = Once::new();
    GLOBAL_POOL.call_once(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .start_handler(|_| set_in_this_thread())
            .build_global();
        if built.is_err() {
            // Started earlier by another caller: its threads live on, so set it in each of them.
            rayon::broadcast(|_| set_in_this_thread());
        }
    });
}

/// A rayon pool builder whose threads flush subnormals from their start. Every pool bertkit
/// builds comes from here.
pub fn thread_pool() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().start_handler(|_| set_in_this_thread())
}

/// Starts a named thread that flushes subnormals from its start (it would inherit the setting
/// from a creator that has it; this does not depend on the creator).
pub fn spawn<F, T>(name: String, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        set_in_this_thread();
        f()
    })
}

/// Whether this CPU architecture has the flags (x86-64, aarch64); elsewhere the functions here
/// do nothing.
pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Sets the flags in the calling thread only (for a thread-start hook).
pub fn set_in_this_thread() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    control::write(control::read() | control::FLUSH);
}

/// Whether the calling thread flushes subnormals (both flags set).
pub fn in_this_thread() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    return control::read() & control::FLUSH == control::FLUSH;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return false;
}

/// Clears the flags in the calling thread: for tests and the benchmark that compare both.
pub fn clear_in_this_thread() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    control::write(control::read() & !control::FLUSH);
}

#[cfg(target_arch = "x86_64")]
mod control {
    use std::arch::asm;

    /// MXCSR bit 15 (flush to zero) and bit 6 (denormals are zero).
    pub const FLUSH: u32 = (1 << 15) | (1 << 6);

    pub fn read() -> u32 {
        let mut csr = 0u32;
        // SAFETY: stmxcsr stores the 32-bit MXCSR to a valid, aligned, writable u32.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
        csr
    }

    pub fn write(csr: u32) {
        // SAFETY: ldmxcsr loads from a valid u32; only the rounding/flush/mask bits it came
        // from are changed by our callers, so it raises no #GP for reserved bits.
        unsafe { asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags)) };
    }
}

#[cfg(target_arch = "aarch64")]
mod control {
    use std::arch::asm;

    /// FPCR bit 24 (FZ): subnormal inputs and outputs of single and double precision are
    /// flushed to zero.
    pub const FLUSH: u32 = 1 << 24;

    pub fn read() -> u32 {
        let fpcr: u64;
        // SAFETY: reading FPCR has no side effects.
        unsafe { asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags)) };
        fpcr as u32
    }

    pub fn write(fpcr: u32) {
        // SAFETY: writes back a value read from FPCR with only the FZ bit changed.
        unsafe {
            asm!("msr fpcr, {}", in(reg) fpcr as u64, options(nomem, nostack, preserves_flags))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// The flags do what they say: with them, a subnormal operand reads as zero and a result
    /// below the normal range becomes zero; without them, both are exact.
    #[test]
    fn flags_flush_subnormal_operands_and_results() {
        if !SUPPORTED {
            return;
        }
        let sub = f32::MIN_POSITIVE / 4.0;
        clear_in_this_thread();
        assert!(!in_this_thread());
        assert_eq!(black_box(sub) * black_box(2.0f32), sub * 2.0);
        assert_eq!(black_box(f32::MIN_POSITIVE) * black_box(0.25f32), sub);
        set_in_this_thread();
        assert!(in_this_thread());
        assert_eq!(black_box(sub) * black_box(2.0f32), 0.0);
        assert_eq!(black_box(f32::MIN_POSITIVE) * black_box(0.25f32), 0.0);
        // Normal values are untouched.
        assert_eq!(
            black_box(f32::MIN_POSITIVE) * black_box(2.0f32),
            f32::MIN_POSITIVE * 2.0
        );
    }

    /// A pool from `thread_pool` has the flags in every thread, even when built by a thread
    /// without them, and a thread from `spawn` has them too.
    #[test]
    fn pools_and_threads_bertkit_starts_flush() {
        if !SUPPORTED {
            return;
        }
        let parent = std::thread::spawn(|| {
            clear_in_this_thread();
            let pool = thread_pool().num_threads(3).build().unwrap();
            let flags = pool.broadcast(|_| in_this_thread());
            let spawned = spawn("t".into(), in_this_thread).unwrap().join().unwrap();
            let plain = std::thread::spawn(in_this_thread).join().unwrap();
            (flags, spawned, plain)
        });
        let (flags, spawned, plain) = parent.join().unwrap();
        assert_eq!(flags, vec![true; 3]);
        assert!(spawned);
        // A plain thread inherits its creator's setting (off here): why the hooks exist.
        assert!(!plain);
    }
}
