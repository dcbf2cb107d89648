//! What a grant has received, from its recorded deliveries: bytes delivered,
//! and which files it holds whole. A file counts as held once the byte ranges
//! delivered cover it, however many resumed or parallel transfers that took,
//! so retries and resumes never count twice.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    audit::report::{Coverage, delivered_span},
    db::grants::Delivery,
};

/// Bytes delivered in all.
pub(crate) fn bytes_delivered(deliveries: &[Delivery]) -> u64 {
    deliveries
        .iter()
        .map(|d| u64::try_from(d.bytes).unwrap_or(0))
        .sum()
}

/// The ids of the files whose every byte has been delivered at least once.
pub(crate) fn completed_files(deliveries: &[Delivery]) -> BTreeSet<String> {
    let mut coverage: BTreeMap<&str, (u64, Coverage)> = BTreeMap::new();
    for d in deliveries {
        let size = u64::try_from(d.size).unwrap_or(0);
        let entry = coverage
            .entry(&d.file_id)
            .or_insert_with(|| (size, Coverage::default()));
        if let Some((start, end)) = delivered_span(d.range_start, None, Some(d.covered)) {
            entry.1.add(start, end);
        }
    }
    coverage
        .into_iter()
        .filter(|(_, (size, c))| c.covers(*size))
        .map(|(id, _)| id.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(file: &str, start: i64, bytes: i64, size: i64) -> Delivery {
        Delivery {
            file_id: file.into(),
            range_start: start,
            bytes,
            covered: bytes,
            size,
        }
    }

    #[test]
    fn resumed_and_parallel_ranges_complete_a_file_once() {
        let deliveries = [
            d("a", 0, 400, 1000),
            d("a", 400, 600, 1000),
            d("b", 500, 500, 1000),
            d("b", 0, 300, 1000),
            d("c", 0, 1000, 1000),
            d("c", 0, 1000, 1000),
        ];
        let done = completed_files(&deliveries);
        assert_eq!(done.into_iter().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(bytes_delivered(&deliveries), 3800);
    }

    #[test]
    fn an_empty_file_is_complete_once_fetched() {
        assert_eq!(completed_files(&[d("e", 0, 0, 0)]).len(), 1);
    }
}
