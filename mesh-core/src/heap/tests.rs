use super::*;

const MIB: u64 = 1 << 20;

/// What the decision does not look at.
fn usage() -> Usage {
    Usage {
        in_use: 0,
        free_in_heap: 0,
        resident_anon: 0,
        resident_file: 0,
    }
}

#[test]
fn waste_below_the_floor_is_left_alone() {
    let usage = Usage {
        in_use: MIB / 2,
        resident_anon: MIB * 2 - 1,
        ..usage()
    };
    assert!(!usage.wasteful());
}

#[test]
fn waste_smaller_than_what_is_in_use_is_left_alone() {
    // Steady load: freed chunks are soon reused.
    let usage = Usage {
        in_use: 6 * MIB,
        resident_anon: 11 * MIB,
        ..usage()
    };
    assert!(!usage.wasteful());
}

#[test]
fn waste_as_large_as_what_is_in_use_is_released() {
    // After a burst: 3 MiB live in 10 MiB resident.
    let usage = Usage {
        in_use: 3 * MIB,
        resident_anon: 10 * MIB,
        ..usage()
    };
    assert!(usage.wasteful());
}

#[test]
fn waste_a_release_could_not_free_is_not_walked_again_until_it_grows() {
    let usage = Usage {
        in_use: 2 * MIB,
        resident_anon: 12 * MIB,
        ..usage()
    };
    assert!(usage.worth_releasing(0));
    // The last release left 11 MiB resident: pinned pages.
    assert!(!usage.worth_releasing(11 * MIB));
    let grown = Usage {
        resident_anon: 13 * MIB,
        ..usage
    };
    assert!(grown.worth_releasing(11 * MIB));
}

#[test]
fn code_is_unmapped_again_only_once_new_code_has_run() {
    // A release left 3 MiB of file pages resident (the steady state's code and libc).
    let settled = 3 * MIB;
    let steady = Usage {
        resident_file: 3 * MIB + MIB / 2,
        ..usage()
    };
    assert!(!steady.code_grew(settled));
    // A certificate request ran code that had not run since.
    let grown = Usage {
        resident_file: 4 * MIB + MIB / 2,
        ..usage()
    };
    assert!(grown.code_grew(settled));
    assert!(grown.code_grew(0), "the first check after the start");
}

#[test]
fn this_process_reports_its_usage() {
    let usage = Usage::now().expect("mallinfo2 and /proc/self/statm");
    assert!(usage.in_use > 0, "{usage:?}");
    assert!(usage.resident_anon > 0, "{usage:?}");
    assert!(usage.resident_file > 0, "{usage:?}");
}
