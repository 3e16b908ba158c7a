//! Pictures and summaries for people: image grids of clean and triggered inputs ([`grid`]),
//! grouped bar charts ([`bars`]), line charts such as ROC curves ([`lines`]), scatter plots of
//! points in groups ([`scatter`]), and CSV fields
//! ([`csv_field`]).

pub mod bars;
pub mod grid;
pub mod lines;
pub mod scatter;

/// `text` as one CSV field (RFC 4180): quoted, with inner quotes doubled, when it holds a comma,
/// a quote or a line break; as it is otherwise.
pub fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(super::csv_field("a/b.png"), "a/b.png");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(super::csv_field("two\nlines"), "\"two\nlines\"");
    }
}
