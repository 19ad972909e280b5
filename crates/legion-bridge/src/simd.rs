//! Wider vectors for hot loops, chosen at run time: the workspace is built for x86_64's baseline
//! (SSE2, two f64 per instruction) so that the binary runs on any cluster node, and a loop that
//! is worth it runs through [`with_avx2`] to use four where the CPU has AVX2.

/// Runs `kernel`, compiled for AVX2 when the CPU has it (detected once, then a cached check).
///
/// What the compiler inlines into `kernel` (its loops, the iterators and closures they call) is
/// vectorized with 32-byte registers; calls it does not inline run as they are. FMA is not
/// enabled, so a multiply and an add stay two rounded operations: the results are the same bits
/// on every CPU.
#[inline]
pub fn with_avx2<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the one requirement of `avx2_context`.
        return unsafe { avx2_context(kernel) };
    }
    kernel()
}

/// `kernel()`, in a function the compiler may use AVX2 in: LLVM inlines the closure here (a
/// callee may be inlined into a caller with more target features, not the other way round).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_context<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_gives_the_same_bits_with_and_without_avx2() {
        // The synthetic source's pixel, `height × blob + floor`, four at a time under AVX2: it
        // must round exactly as the SSE2 loop does (no fused multiply-add). The workspace
        // optimizes this crate in test builds too (Cargo.toml), so the wide loop is real here.
        let blob: Vec<f64> = (0..4099).map(|k| (k as f64 * 0.37).sin() * 1e3).collect();
        let floor: Vec<f64> = (0..4099).map(|k| (k as f64 * 0.11).cos() / 7.0).collect();
        let height = std::hint::black_box(201.7);
        let kernel = |out: &mut Vec<f64>| {
            out.clear();
            out.extend(blob.iter().zip(&floor).map(|(b, f)| height * b + f));
        };
        let mut wide = Vec::new();
        with_avx2(|| kernel(&mut wide));
        let mut plain = Vec::new();
        kernel(&mut plain);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide), bits(&plain));
        assert_eq!(wide.len(), 4099);
        assert_eq!(with_avx2(|| 6 * 7), 42);
    }
}
