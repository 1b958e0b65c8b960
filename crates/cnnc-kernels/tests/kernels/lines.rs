//! `Lines` buffers start on a 64-byte line and hold what they were given.

use cnnc_kernels::lines::Lines;

#[test]
fn starts_on_a_line_and_holds_the_values() {
    for len in [0, 1, 15, 16, 17, 1000] {
        let l = Lines::from_fn(len, |i| i as f32);
        assert_eq!(l.len(), len);
        assert_eq!(l.as_ptr() as usize % 64, 0, "len {len}");
        assert!(l.iter().enumerate().all(|(i, &x)| x == i as f32));
        let mut f = Lines::filled(len, 2.5);
        assert!(f.iter().all(|&x| x == 2.5));
        f.iter_mut().for_each(|x| *x = -1.0);
        assert!(f.iter().all(|&x| x == -1.0));
    }
}
