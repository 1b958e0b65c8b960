//! Buffers between guard pages: `mmap` with a `PROT_NONE` page on both sides, so that a kernel
//! reading or writing outside its buffers faults instead of passing by luck. Data sits flush
//! against the trailing guard; what is left of the first data page is filled with NaN, so a
//! read before the start shows up as a wrong (NaN) result and a write there as a changed
//! sentinel ([`GuardBuf::sentinels_intact`]).

use std::ptr::NonNull;

const PAGE: usize = 4096;

pub struct GuardBuf {
    map: NonNull<u8>,
    map_len: usize,
    /// Float offset of the data from the first data page.
    lead: usize,
    len: usize,
}

impl GuardBuf {
    /// `len` floats (at least 1 page is mapped) holding `init`, padded with NaN before.
    pub fn new(init: &[f32]) -> GuardBuf {
        let len = init.len();
        let data_pages = (len * 4).div_ceil(PAGE).max(1);
        let map_len = (data_pages + 2) * PAGE;
        // SAFETY: an anonymous private mapping of map_len bytes; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        let base = p as *mut u8;
        // SAFETY: the first and last page are inside the mapping.
        unsafe {
            assert_eq!(libc::mprotect(base as *mut _, PAGE, libc::PROT_NONE), 0);
            assert_eq!(libc::mprotect(base.add(map_len - PAGE) as *mut _, PAGE, libc::PROT_NONE), 0);
        }
        let lead = (data_pages * PAGE / 4) - len;
        let mut buf = GuardBuf { map: NonNull::new(base).expect("mmap"), map_len, lead, len };
        buf.all_mut().fill(f32::NAN);
        buf.as_mut_slice().copy_from_slice(init);
        buf
    }

    /// The whole data area: NaN sentinels, then the data.
    fn all_mut(&mut self) -> &mut [f32] {
        // SAFETY: the data pages are mapped read-write, 4-byte aligned, and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(PAGE) as *mut f32, self.lead + self.len) }
    }

    fn all(&self) -> &[f32] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(PAGE) as *const f32, self.lead + self.len) }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.all()[self.lead..]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let lead = self.lead;
        &mut self.all_mut()[lead..]
    }

    /// Whether the NaN sentinels before the data are untouched.
    pub fn sentinels_intact(&self) -> bool {
        self.all()[..self.lead].iter().all(|v| v.is_nan())
    }
}

impl Drop for GuardBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in new.
        unsafe { libc::munmap(self.map.as_ptr() as *mut _, self.map_len) };
    }
}
