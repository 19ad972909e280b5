//! Realm's system memory (`-ll:csize`) is a shared-memory file that Realm allocates in full at
//! start (`posix_fallocate`), then maps. Its pages enter the process's resident set only as they
//! are first touched, and Realm places each round's instances (task results, the runtime's own)
//! at ever new offsets: resident memory then climbs for hours towards `-ll:csize` although the
//! machine's memory was committed at start. Mapping the whole of it up front makes the resident
//! set what it will be from the first second, so that a growing RSS means a real leak.

use std::io::Error as IoError;

/// Maps every page of this process's Realm system memory of `mib` MiB, if it can be found: a
/// read-write shared mapping of a `memfd` of exactly that size. Returns the bytes mapped.
pub(crate) fn populate(mib: u64) -> Result<u64, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let wanted = mib << 20;
    let Some((start, len)) = maps.lines().find_map(|line| realm_memory(line, wanted)) else {
        return Err(format!("no shared mapping of {mib} MiB found"));
    };
    // SAFETY: [start, start + len) is a mapping of this process (read just now from its maps);
    // MADV_POPULATE_WRITE only faults its pages in, without changing their contents.
    let status = unsafe { libc::madvise(start as *mut libc::c_void, len as usize, libc::MADV_POPULATE_WRITE) };
    if status != 0 {
        return Err(format!("madvise(MADV_POPULATE_WRITE): {}", IoError::last_os_error()));
    }
    Ok(len)
}

/// `(start, length)` of a `/proc/self/maps` line when it is a read-write shared `memfd` mapping of
/// `size` bytes.
fn realm_memory(line: &str, size: u64) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    if perms != "rw-s" || !path.starts_with("/memfd:") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
    (end - start == size).then_some((start, end - start))
}

#[cfg(test)]
mod tests {
    use super::realm_memory;

    #[test]
    fn finds_only_shared_memfd_mappings_of_the_size() {
        let line = "7fd570000000-7fd5b0000000 rw-s 00000000 00:01 14738                      /memfd: (deleted)";
        assert_eq!(realm_memory(line, 1 << 30), Some((0x7fd5_7000_0000, 1 << 30)));
        assert_eq!(realm_memory(line, 1 << 20), None);
        let private = "7fd570000000-7fd5b0000000 rw-p 00000000 00:00 0";
        assert_eq!(realm_memory(private, 1 << 30), None);
        let file = "7fd570000000-7fd5b0000000 rw-s 00000000 08:01 77 /dev/shm/other";
        assert_eq!(realm_memory(file, 1 << 30), None);
    }
}
