//! Model cards: the Markdown a lab ships with its weights (a release's
//! `README.md`, as on the model hubs, or a file given at publish), shown on
//! the model's page. The card is the lab's text, but a page of the portal
//! must not run anyone's script: it is rendered by pulldown-cmark and
//! cleaned by ammonia, which keeps formatting, tables and links and drops
//! everything else (scripts, styles, event handlers, forms, images that
//! would call a third party from a researcher's browser).

use std::collections::HashSet;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The largest card a release may carry, in bytes.
pub(crate) const MAX_CARD: usize = 256 * 1024;

/// The longest one-line summary the catalogue shows, in characters.
const MAX_SUMMARY: usize = 200;

/// A model card, ready for a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Card {
    /// Sanitised HTML: safe to put in a page as it is.
    pub(crate) html: String,
    /// The licence its front matter names (`license: apache-2.0`).
    pub(crate) licence: Option<String>,
    /// The first paragraph, as plain text, cut to one line's length.
    pub(crate) summary: Option<String>,
}

/// Checks a card before a release stores it: within [`MAX_CARD`] bytes.
/// (Any text renders; what it may not do is taken out when it does.)
pub(crate) fn check(markdown: &str) -> Result<(), String> {
    if markdown.len() > MAX_CARD {
        return Err(format!(
            "the model card is {} bytes; at most {MAX_CARD} are shown",
            markdown.len()
        ));
    }
    Ok(())
}

/// How cards are read: the hubs' tables, strikethrough and task lists, and
/// their YAML front matter as a block of its own.
const OPTIONS: Options = Options::ENABLE_TABLES
    .union(Options::ENABLE_STRIKETHROUGH)
    .union(Options::ENABLE_TASKLISTS)
    .union(Options::ENABLE_YAML_STYLE_METADATA_BLOCKS);

/// Renders a card. YAML front matter (the hubs' metadata block) is not
/// shown; its `license` is.
pub(crate) fn render(markdown: &str) -> Card {
    let mut licence = None;
    let mut in_metadata = false;
    let events: Vec<Event<'_>> = Parser::new_ext(markdown, OPTIONS)
        .filter(|event| {
            match event {
                Event::Start(Tag::MetadataBlock(_)) => in_metadata = true,
                Event::End(TagEnd::MetadataBlock(_)) => in_metadata = false,
                Event::Text(text) if in_metadata => licence = licence.take().or_else(|| licence_in(text)),
                _ => {}
            }
            !in_metadata && !matches!(event, Event::End(TagEnd::MetadataBlock(_)))
        })
        .collect();
    let mut raw = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut raw, events.into_iter());
    Card {
        html: clean(&raw),
        licence,
        summary: summary(markdown),
    }
}

/// The card's first paragraph as plain text on one line: what the
/// catalogue shows. Reads only as far as that paragraph, and renders and
/// cleans nothing, so a public page can ask for every model's.
pub(crate) fn summary(markdown: &str) -> Option<String> {
    let mut paragraph: Option<String> = None;
    for event in Parser::new_ext(markdown, OPTIONS) {
        match event {
            Event::Start(Tag::Paragraph) => paragraph = Some(String::new()),
            Event::Text(text) | Event::Code(text) => {
                if let Some(p) = paragraph.as_mut() {
                    p.push_str(&text);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(p) = paragraph.as_mut() {
                    p.push(' ');
                }
            }
            Event::End(TagEnd::Paragraph) => {
                if let Some(p) = paragraph.take().filter(|p| !p.trim().is_empty()) {
                    return Some(one_line(&p));
                }
            }
            _ => {}
        }
    }
    None
}

/// `license: X` from a YAML front matter block, if it names one.
fn licence_in(block: &str) -> Option<String> {
    block.lines().find_map(|line| {
        let value = line.strip_prefix("license:")?.trim().trim_matches(['"', '\'']);
        (!value.is_empty() && value.len() <= 100).then(|| value.to_owned())
    })
}

/// `text` on one line, at most [`MAX_SUMMARY`] characters, cut at a word.
fn one_line(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let whole = words.join(" ");
    if whole.chars().count() <= MAX_SUMMARY {
        return whole;
    }
    let mut out = String::new();
    for word in words {
        if out.chars().count() + word.chars().count() + 2 > MAX_SUMMARY {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.push('…');
    out
}

/// Keeps what a card needs to read well and nothing that acts: no images
/// (a remote one would tell a third party who reads the page), links only
/// to http, https and mailto, each opened without the portal as referrer.
fn clean(html: &str) -> String {
    let mut builder = ammonia::Builder::default();
    builder
        .rm_tags(["img"])
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("nofollow noopener noreferrer"));
    builder.clean(html).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "---\nlicense: apache-2.0\ntags:\n- text-generation\n---\n\n# Tiny model\n\nA *small* model for\ntesting the portal.\n\n| size | layers |\n|---|---|\n| 1M | 2 |\n";

    #[test]
    fn a_card_renders_with_its_licence_and_summary() {
        let card = render(CARD);
        assert_eq!(card.licence.as_deref(), Some("apache-2.0"));
        assert_eq!(
            card.summary.as_deref(),
            Some("A small model for testing the portal.")
        );
        assert!(card.html.contains("<h1>Tiny model</h1>"), "{}", card.html);
        assert!(card.html.contains("<em>small</em>") && card.html.contains("<table>"));
        assert!(!card.html.contains("license") && !card.html.contains("text-generation"));
    }

    #[test]
    fn nothing_in_a_card_runs_or_calls_out() {
        let card = render(
            "Hi <script>alert(1)</script> [x](javascript:alert(2)) <a href=\"https://lab.example\" onclick=\"e()\">lab</a>\n\n\
             ![tracker](https://tracker.example/pixel.png) <img src=x onerror=alert(3)> <iframe src=\"https://x\"></iframe>\n\n\
             <style>body{display:none}</style><form action=/admin><button>go</button></form>",
        );
        for bad in [
            "<script",
            "javascript:",
            "onclick",
            "onerror",
            "<img",
            "<iframe",
            "<style",
            "<form",
            "tracker.example",
        ] {
            assert!(!card.html.contains(bad), "{bad} in {}", card.html);
        }
        assert!(
            card.html.contains("href=\"https://lab.example\""),
            "{}",
            card.html
        );
        assert!(
            card.html.contains("rel=\"nofollow noopener noreferrer\""),
            "{}",
            card.html
        );
    }

    #[test]
    fn a_summary_is_one_line_and_cards_have_a_size_limit() {
        let long = format!("# T\n\n{}\n", "word ".repeat(100));
        let summary = render(&long).summary.unwrap();
        assert!(
            summary.chars().count() <= MAX_SUMMARY && summary.ends_with('…'),
            "{summary}"
        );
        assert_eq!(render("# Only a heading\n").summary, None);
        assert!(check(&"x".repeat(MAX_CARD)).is_ok());
        assert!(check(&"x".repeat(MAX_CARD + 1)).unwrap_err().contains("at most"));
    }
}
