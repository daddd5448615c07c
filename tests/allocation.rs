//! Decoding a bag message with a corrupt length allocates a bounded amount, not the length it
//! declares. Its own test binary: the global allocator records the largest request made on the test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use df_planner::msgs::{from_cdr, to_cdr, Header, Image, Time};

struct LargestRequest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // try_with: a thread being torn down has no slot left, and allocation must not panic.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

unsafe impl GlobalAlloc for LargestRequest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestRequest = LargestRequest;

#[test]
fn a_corrupt_length_is_an_error_that_allocates_at_most_a_mebibyte() {
    let bytes = to_cdr(&Image {
        header: Header {
            stamp: Time::from_ns(7),
            frame_id: "cam".into(),
        },
        height: 1,
        width: 2,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: 6,
        data: vec![1, 2, 3, 4, 5, 6],
    });
    // The frame_id length (after the 4-byte header and the 8-byte stamp), then the data length
    // (the last 4 bytes before the 6 data bytes), set to nearly 4 GiB.
    for at in [4 + 8, bytes.len() - 6 - 4] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&0xFFFF_FFF0_u32.to_le_bytes());
        LARGEST.with(|largest| largest.set(0));
        let decoded = from_cdr::<Image>(&bad);
        let largest = LARGEST.with(Cell::get);
        assert!(decoded.is_err(), "length at byte {at}");
        // 1 MiB: serde's cap on what a sequence reserves for a length it cannot trust.
        assert!(
            largest <= 1 << 20,
            "length at byte {at}: one allocation of {largest} bytes"
        );
    }
}
