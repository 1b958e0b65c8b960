//! Source spans and the diagnostic data model shared by every phase of cnnc.
//!
//! Each phase (syntax, lowering, shape inference, passes, back ends) keeps its own typed error
//! enum and converts it into a [`Diagnostic`] here. Turning a diagnostic into text is the job of
//! the front doors (the driver's renderer), never of the phases: this crate has no dependencies.

mod codes;
mod source;

pub use codes::{CODES, Code, CodeInfo};
pub use source::{LineCol, SourceFile};

/// A half-open byte range `[start, end)` into one source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const DUMMY: Span = Span { start: 0, end: 0 };

    pub fn new(start: usize, end: usize) -> Span {
        // Sources are limited to 4 GiB by `SourceFile::new`, so offsets fit in u32.
        Span { start: start as u32, end: end as u32 }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Shifts a span found in a slice of the source back into whole-source coordinates.
    pub fn offset(self, by: usize) -> Span {
        Span::new(self.start as usize + by, self.end as usize + by)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

/// A span with a short message printed under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One message for the user: what went wrong, where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The place the diagnostic is about; its message is printed under the underline.
    pub primary: Label,
    /// Other places worth showing (the first definition of a duplicate name, say).
    pub secondary: Vec<Label>,
    /// Facts that explain the problem ("input is [3, 5, 5], padded to [3, 5, 5]").
    pub notes: Vec<String>,
    /// What the user can do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            primary: Label { span, message: label.into() },
            secondary: Vec::new(),
            notes: Vec::new(),
            hint: None,
        }
    }

    pub fn warning(code: Code, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message, span, label) }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label { span, message: message.into() });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Whether any of the diagnostics is an error (warnings alone let compilation go on).
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}

/// Edit distance between two names, for "did you mean" hints: insertions, deletions,
/// substitutions and swaps of neighbouring letters (`widht`) each count one.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    distance_within(&a, &b, usize::MAX, &mut Rows::default()).unwrap_or(usize::MAX)
}

/// Three rows of the distance table, kept between calls so that comparing a name with many
/// candidates allocates once.
#[derive(Default)]
struct Rows {
    two_up: Vec<usize>,
    up: Vec<usize>,
    row: Vec<usize>,
}

/// [`edit_distance`] of `a` and `b` if it is at most `limit`, else None, found without the
/// rest of the table once two rows in a row exceed `limit` everywhere (every later entry then
/// does too: each comes from the row above or the one above that, plus at least one).
fn distance_within(a: &[char], b: &[char], limit: usize, rows: &mut Rows) -> Option<usize> {
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let Rows { two_up, up, row } = rows;
    // Row i holds the distances between the first i letters of a and the first j of b.
    up.clear();
    up.extend(0..=b.len());
    two_up.clear();
    two_up.resize(b.len() + 1, 0);
    // Row 0 holds a zero, so it is never over the limit.
    let mut up_over = false;
    for i in 1..=a.len() {
        row.clear();
        row.push(i);
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (up[j] + 1).min(row[j - 1] + 1).min(up[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(two_up[j - 2] + 1);
            }
            row.push(best);
        }
        let over = row.iter().all(|&d| d > limit);
        if over && up_over {
            return None;
        }
        up_over = over;
        std::mem::swap(two_up, up);
        std::mem::swap(up, row);
    }
    let d = up[b.len()];
    (d <= limit).then_some(d)
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo: within a
/// third of its length (at least one edit), or containing it or contained in it (longer than
/// two letters); the first of the closest.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let a: Vec<char> = name.chars().collect();
    let limit = (a.len() / 3).max(1);
    let (mut rows, mut b) = (Rows::default(), Vec::new());
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        b.clear();
        b.extend(c.chars());
        let related = c.len() > 2 && (c.contains(name) || name.contains(c));
        // A related candidate counts at any distance; the others only within the limit.
        let d = distance_within(&a, &b, if related { usize::MAX } else { limit }, &mut rows);
        if let Some(d) = d
            && best.is_none_or(|(bd, _)| d < bd)
        {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let layers = ["conv", "maxpool", "avgpool", "relu", "fc"];
        assert_eq!(did_you_mean("maxpol", layers), Some("maxpool"));
        assert_eq!(did_you_mean("max_pool", layers), Some("maxpool"));
        assert_eq!(did_you_mean("conv2d", layers), Some("conv"));
        assert_eq!(did_you_mean("zzz", layers), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("widht", "width"), 1);
        assert_eq!(did_you_mean("imgae", ["image", "x"]), Some("image"));
    }

    /// The whole table, the definition the bounded distance must agree with.
    fn full_distance(a: &[char], b: &[char]) -> usize {
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = best;
            }
        }
        d[a.len()][b.len()]
    }

    /// Every pair of words of up to 6 letters over `abc` (so that swaps and repeats are
    /// common), at every limit from 0 to 7: the bounded distance is the full one when that is
    /// within the limit, and None otherwise, with one set of rows reused throughout.
    #[test]
    fn bounded_distance_agrees_with_the_whole_table() {
        let words: Vec<Vec<char>> = (0..=6u32)
            .flat_map(|len| {
                (0..3usize.pow(len)).map(move |k| (0..len).map(|p| b"abc"[(k / 3usize.pow(p)) % 3] as char).collect())
            })
            .collect();
        let mut rows = Rows::default();
        for (n, a) in words.iter().enumerate().step_by(7) {
            for b in words.iter().skip(n % 5).step_by(5) {
                let full = full_distance(a, b);
                for limit in 0..=7 {
                    let want = (full <= limit).then_some(full);
                    assert_eq!(distance_within(a, b, limit, &mut rows), want, "{a:?} {b:?} limit {limit}");
                }
            }
        }
    }
}
