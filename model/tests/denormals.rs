//! `flush_denormals` reaches rayon's global pool (where burn's CPU backend and gemm compute)
//! even when the pool was started before it, and threads started afterwards inherit the flags.
//! Its own test binary: the global pool is per process.

use bertkit_model::denormals::{self, flush_denormals, in_this_thread};

#[test]
fn global_pool_started_earlier_is_set_and_new_threads_inherit() {
    if !denormals::SUPPORTED {
        return;
    }
    // Someone used the global pool before: its threads have the default environment.
    let before = rayon::broadcast(|_| in_this_thread());
    assert!(before.iter().all(|&f| !f), "{before:?}");
    assert!(!in_this_thread());

    flush_denormals();
    assert!(in_this_thread());
    let after = rayon::broadcast(|_| in_this_thread());
    assert_eq!(after, vec![true; rayon::current_num_threads()]);
    // Work stolen onto any thread of the pool flushes: a subnormal operand reads as zero.
    let sub = f32::MIN_POSITIVE / 4.0;
    let products: Vec<f32> = rayon::broadcast(|_| std::hint::black_box(sub) * 3.0);
    assert!(products.iter().all(|&p| p == 0.0), "{products:?}");

    // A thread started now inherits the setting from this one (the binary relies on this).
    assert!(std::thread::spawn(in_this_thread).join().unwrap());
    // Calling again is harmless.
    flush_denormals();
    assert!(rayon::broadcast(|_| in_this_thread()).iter().all(|&f| f));
}
