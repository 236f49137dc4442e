//! "Did you mean ...?" suggestions by edit distance.

/// Names longer than this are not compared (the cost is quadratic in the length).
const MAX_LEN: usize = 200;

/// The optimal-string-alignment distance: insertions, deletions, substitutions and transpositions of
/// adjacent characters each count one. Three rolling rows of the usual dynamic programme.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let cell = |r: &[usize], k: usize| r.get(k).copied().unwrap_or(usize::MAX / 2);
            let substitution = cell(&previous, j) + usize::from(ca != cb);
            let deletion = cell(&previous, j + 1) + 1;
            let insertion = cell(&row, j) + 1;
            let mut best = substitution.min(deletion).min(insertion);
            let swapped =
                i > 0 && j > 0 && a.get(i - 1).is_some_and(|&p| p == cb) && b.get(j - 1).is_some_and(|&p| p == ca);
            if swapped {
                best = best.min(cell(&before, j - 1) + 1);
            }
            row.push(best);
        }
        before = std::mem::replace(&mut previous, row);
    }
    previous.last().copied().unwrap_or(0)
}

/// The candidate closest to `target`, if it is close enough to be a likely typo (a third of its length).
pub(crate) fn closest<'a>(target: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    closest_within(target, candidates, (target.chars().count() / 3).max(1))
}

/// The candidate closest to `target` at most `limit` edits away.
pub(crate) fn closest_within<'a>(
    target: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Option<&'a str> {
    let len = target.chars().count();
    if len > MAX_LEN {
        return None;
    }
    candidates
        .into_iter()
        .filter(|c| *c != target && c.chars().count().abs_diff(len) <= limit)
        .map(|c| (distance(target, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_suggestions() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("levle", "level"), 1);
        assert_eq!(closest("averge", ["avg", "average", "max"]), Some("average"));
        assert_eq!(closest("levle", ["level", "display"]), Some("level"));
        assert_eq!(closest("xyz", ["level", "display"]), None);
    }
}
