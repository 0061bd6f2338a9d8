//! Property tests (issue 17) of `seq` ordering in retention (PROTOCOL.md §4.2–§4.4): for any
//! chunk sizes, retention limit, `afterSeq` and `maxBytes`, a page holds retained chunks in
//! strictly increasing, gap-free `seq` order after `afterSeq`, respects `maxBytes` (the first
//! chunk always comes), and paging from any point visits every retained chunk exactly once.

use proptest::prelude::*;

use super::retention::Retention;
use super::wire::Stream;

fn config() -> ProptestConfig {
    crate::proptest_config::config(1024)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pages_are_ordered_gap_free_and_complete(
        sizes in prop::collection::vec(0usize..300, 0..60),
        limit in 1usize..2000,
        after in 0u64..70,
        max_bytes in prop::option::of(0u64..1000),
    ) {
        let mut retention = Retention::new(limit);
        for (i, size) in sizes.iter().enumerate() {
            let stream = if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout };
            retention.push(i as u64 + 1, stream, vec![i as u8; *size], |_| {});
        }
        prop_assert!(retention.bytes <= limit || retention.chunks.len() == 1);
        let retained: Vec<u64> = retention.chunks.iter().map(|c| c.seq).collect();
        // What is retained is the newest suffix, gap-free.
        if let (Some(first), Some(last)) = (retained.first(), retained.last()) {
            prop_assert_eq!(*last, sizes.len() as u64);
            prop_assert_eq!(retained.clone(), (*first..=*last).collect::<Vec<_>>());
        }

        let page = retention.page(after, max_bytes);
        let seqs: Vec<u64> = page.iter().map(|c| c.seq).collect();
        let expected_first = retained.iter().copied().find(|s| *s > after);
        prop_assert_eq!(seqs.first().copied(), expected_first);
        prop_assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let total: u64 = page.iter().map(|c| c.bytes.len() as u64).sum();
        if let Some(max) = max_bytes {
            prop_assert!(page.len() <= 1 || total <= max, "{} > {}", total, max);
        } else {
            prop_assert_eq!(seqs.len(), retained.iter().filter(|s| **s > after).count());
        }

        // Paging on from the last seq seen reads everything after `after`, once, in order.
        let mut seen = Vec::new();
        let mut cursor = after;
        loop {
            let page = retention.page(cursor, max_bytes);
            let Some(last) = page.last() else { break };
            seen.extend(page.iter().map(|c| c.seq));
            cursor = last.seq;
        }
        let want: Vec<u64> = retained.iter().copied().filter(|s| *s > after).collect();
        prop_assert_eq!(seen, want);
    }
}
