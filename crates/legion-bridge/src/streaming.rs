//! Memory hints for large arrays in region instances. Streaming (non-temporal) writes: for arrays
//! far larger than the caches that nobody reads again soon, stores that go to memory without first
//! reading each line into the caches (no read-for-ownership), which halves the memory traffic of
//! writing them. Prefetched reads: for arrays read in pieces the hardware cannot predict.

/// Fills `dst` chunk by chunk: `fill(i, scratch)` writes chunk `i` (of `chunk` elements, the last
/// one shorter) into a cache-resident scratch buffer, which is then streamed into `dst`. On
/// x86_64 the stores are non-temporal and fenced before returning, so the data is visible to any
/// thread that synchronizes with this one afterwards; elsewhere it is a plain copy.
pub fn fill_streaming(dst: &mut [f64], chunk: usize, mut fill: impl FnMut(usize, &mut [f64])) {
    let chunk = chunk.max(1);
    let mut scratch = vec![0.0f64; chunk.min(dst.len())];
    for (i, out) in dst.chunks_mut(chunk).enumerate() {
        let scratch = &mut scratch[..out.len()];
        fill(i, scratch);
        stream(out, scratch);
    }
    fence();
}

/// Asks the CPU to start bringing `data` into the caches, without waiting for it: a hint (it
/// never faults, and does nothing where unsupported). Worth it for data the hardware prefetcher
/// cannot foresee, such as the rows of a region of interest, each starting on a page of its own.
#[inline]
pub fn prefetch(data: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(8) {
        // SAFETY: a prefetch has no preconditions (it never faults, even on a bad address); the
        // address is inside `data` anyway. SSE is part of the x86_64 baseline.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr() as *const i8) };
    }
}

/// For rows `0..count` read in order: call before reading row `y`, and it asks for row
/// `y + ahead` (at `y == 0`, for rows `1..=ahead` at once), so that each row is on its way well
/// before it is read. `row(r)` gives row `r`.
#[inline]
pub fn prefetch_ahead<'a>(y: usize, count: usize, ahead: usize, row: impl Fn(usize) -> &'a [f64]) {
    let wanted = if y == 0 { 1..ahead + 1 } else { y + ahead..y + ahead + 1 };
    wanted.take_while(|&r| r < count).for_each(|r| prefetch(row(r)));
}

/// Size of the last-level cache of CPU 0 (Linux sysfs), or 32 MiB when it cannot be read.
pub fn last_level_cache_bytes() -> usize {
    (0..8)
        .rev()
        .find_map(|index| {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
            let kind = std::fs::read_to_string(format!("{dir}/type")).ok()?;
            if kind.trim() == "Instruction" {
                return None;
            }
            parse_cache_size(&std::fs::read_to_string(format!("{dir}/size")).ok()?)
        })
        .unwrap_or(32 << 20)
}

/// "32768K", "1M", "512" (bytes) as bytes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1 << 10),
        b'M' => (&text[..text.len() - 1], 1 << 20),
        b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// Streams `src` into `dst` past the caches.
#[cfg(target_arch = "x86_64")]
fn stream(dst: &mut [f64], src: &[f64]) {
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        unsafe { stream_avx(dst, src) }
    } else {
        stream_sse2(dst, src)
    }
}

/// Streams `src` into `dst` with 32-byte AVX stores, which fill a cache line's write-combining
/// buffer in two instructions: a core streams about twice as fast as with SSE2's 16-byte ones
/// (measured on AMD EPYC).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_avx(dst: &mut [f64], src: &[f64]) {
    use std::arch::x86_64::{_mm256_loadu_pd, _mm256_stream_pd};
    // Streaming stores of 32 bytes need 32-byte-aligned addresses: a plain store until then.
    let head = dst.as_ptr().align_offset(32).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let (dst, src) = (&mut dst[head..], &src[head..]);
    let quads = dst.len() / 4;
    for k in 0..quads {
        // SAFETY: `4k + 3 < len` for both slices (same length); `dst + 4k` is 32-byte aligned
        // (`dst` is, after the head); the caller checked that the CPU has AVX.
        unsafe { _mm256_stream_pd(dst.as_mut_ptr().add(4 * k), _mm256_loadu_pd(src.as_ptr().add(4 * k))) };
    }
    dst[4 * quads..].copy_from_slice(&src[4 * quads..]);
}

/// Streams `src` into `dst` with the 16-byte stores every x86_64 has.
#[cfg(target_arch = "x86_64")]
fn stream_sse2(dst: &mut [f64], src: &[f64]) {
    use std::arch::x86_64::{_mm_loadu_pd, _mm_stream_pd};
    // Streaming stores of 16 bytes need 16-byte-aligned addresses: a plain store until then.
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let (dst, src) = (&mut dst[head..], &src[head..]);
    let pairs = dst.len() / 2;
    for k in 0..pairs {
        // SAFETY: `2k + 1 < len` for both slices (same length); `dst + 2k` is 16-byte aligned
        // (`dst` is, after the head); SSE2 is part of the x86_64 baseline.
        unsafe { _mm_stream_pd(dst.as_mut_ptr().add(2 * k), _mm_loadu_pd(src.as_ptr().add(2 * k))) };
    }
    dst[2 * pairs..].copy_from_slice(&src[2 * pairs..]);
}

#[cfg(not(target_arch = "x86_64"))]
fn stream(dst: &mut [f64], src: &[f64]) {
    dst.copy_from_slice(src);
}

fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no preconditions; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_store_widths_copy_every_element_at_every_alignment() {
        let src: Vec<f64> = (0..1031).map(|k| k as f64).collect();
        let mut dst = vec![0.0f64; 1031];
        for offset in 0..4 {
            for len in [0, 1, 3, 4, 5, 8, 1027 - offset] {
                let range = offset..offset + len;
                dst.fill(-1.0);
                stream_sse2(&mut dst[range.clone()], &src[range.clone()]);
                assert_eq!(&dst[range.clone()], &src[range.clone()], "SSE2, offset {offset}, len {len}");
                if std::arch::is_x86_feature_detected!("avx") {
                    dst.fill(-1.0);
                    // SAFETY: the CPU has AVX (checked just above).
                    unsafe { stream_avx(&mut dst[range.clone()], &src[range.clone()]) };
                    assert_eq!(&dst[range.clone()], &src[range], "AVX, offset {offset}, len {len}");
                }
                fence();
            }
        }
        // A hint that leaves the data as it was.
        prefetch(&src[3..]);
        assert_eq!(src[1030], 1030.0);
    }

    #[test]
    fn rows_ahead_are_asked_for_once_each_and_never_past_the_last() {
        for count in [0, 1, 3, 20, 40] {
            let asked = std::cell::RefCell::new(Vec::new());
            let row = |r: usize| {
                asked.borrow_mut().push(r);
                &[0.0f64; 4][..]
            };
            for y in 0..count {
                prefetch_ahead(y, count, 16, row);
            }
            let expected: Vec<usize> = (1..count).collect();
            assert_eq!(*asked.borrow(), expected, "{count} rows");
        }
    }

    #[test]
    fn cache_sizes_parse_and_the_machine_has_one() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("big"), None);
        assert!(last_level_cache_bytes() >= 1 << 20);
    }

    #[test]
    fn fills_every_element_whatever_the_alignment_and_chunking() {
        let mut buffer = vec![0.0f64; 1031];
        for offset in 0..3 {
            for chunk in [1, 7, 512, 4096] {
                let dst = &mut buffer[offset..];
                let len = dst.len();
                fill_streaming(dst, chunk, |i, out| {
                    for (j, v) in out.iter_mut().enumerate() {
                        *v = (i * chunk + j) as f64;
                    }
                });
                let expected: Vec<f64> = (0..len).map(|k| k as f64).collect();
                assert_eq!(&buffer[offset..], &expected[..], "offset {offset}, chunk {chunk}");
            }
        }
    }
}
