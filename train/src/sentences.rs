//! Sentence splitting for prose, rule based (like the Punkt-free splitters of NVIDIA's and
//! Google's prep scripts, which expect one sentence per line).
//!
//! Every line is split on its own (a paragraph never continues across a line end). Inside a
//! line, a sentence ends after `.`, `!` or `?` (and any closing quotes or brackets) when
//! whitespace follows and the next word starts with an upper-case letter, a digit, a quote or
//! an opening bracket — unless the word before the full stop is a known abbreviation ("Mr.",
//! "e.g.", "U.S.") or a single letter (an initial, "J. Smith").

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "gen", "col", "capt", "lt",
    "sgt", "gov", "sen", "rep", "rev", "hon", "pres", "vs", "etc", "eg", "ie", "cf", "al", "no",
    "vol", "pp", "ch", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "inc", "ltd", "co", "corp", "dept", "univ", "approx", "ca", "est", "op",
    "us", "uk", "usa", "ussr", "mass", "calif",
];

fn closes(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '’' | '”' | '»')
}

fn opens(c: char) -> bool {
    c.is_uppercase() || c.is_ascii_digit() || matches!(c, '"' | '\'' | '(' | '[' | '“' | '‘' | '«')
}

/// The word just before byte `end` (a full stop), lower-cased, without inner dots.
fn word_before(line: &str, end: usize) -> String {
    let start = line[..end]
        .rfind(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .map(|i| i + 1)
        .unwrap_or(0);
    line[start..end]
        .chars()
        .filter(|&c| c != '.')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Split text into sentences (trimmed, never empty).
pub fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        split_line(line, &mut out);
    }
    out
}

fn split_line<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    let mut start = 0;
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            // Extend over repeated terminators and closing quotes/brackets.
            let mut j = i + 1;
            while j < chars.len() && (matches!(chars[j].1, '.' | '!' | '?') || closes(chars[j].1)) {
                j += 1;
            }
            // Need whitespace, then a sentence-opening character.
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let boundary = k > j && k < chars.len() && opens(chars[k].1) && {
                if c == '.' {
                    let w = word_before(line, pos);
                    let initial = w.chars().count() == 1 && w.chars().all(char::is_alphabetic);
                    !(initial || ABBREVIATIONS.contains(&w.as_str()))
                } else {
                    true
                }
            };
            if boundary {
                let end = if j < chars.len() {
                    chars[j].0
                } else {
                    line.len()
                };
                let s = line[start..end].trim();
                if !s.is_empty() {
                    out.push(s);
                }
                start = chars[k].0;
                i = k;
                continue;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    let s = line[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_prose() {
        assert_eq!(
            split("Mr. Smith went to Washington. He arrived at 5 p.m. on Monday! Did he? \"Yes.\" (It rained.) 3 days later."),
            vec![
                "Mr. Smith went to Washington.",
                "He arrived at 5 p.m. on Monday!",
                "Did he?",
                "\"Yes.\"",
                "(It rained.)",
                "3 days later."
            ]
        );
    }

    #[test]
    fn keeps_abbreviations_initials_and_numbers() {
        assert_eq!(
            split("J. R. R. Tolkien wrote e.g. The Hobbit in the U.S. Army years. Pi is 3.14 roughly."),
            vec![
                "J. R. R. Tolkien wrote e.g. The Hobbit in the U.S. Army years.",
                "Pi is 3.14 roughly."
            ]
        );
        assert_eq!(
            split("no capital. after this"),
            vec!["no capital. after this"]
        );
    }

    #[test]
    fn lines_are_boundaries_and_blank_text_gives_nothing() {
        assert_eq!(split("one\n\n two \nthree"), vec!["one", "two", "three"]);
        assert!(split("  \n\t\n").is_empty());
        assert_eq!(split("Wait..."), vec!["Wait..."]);
        assert_eq!(
            split("Ünïcödé. Ça va? Oui."),
            vec!["Ünïcödé.", "Ça va?", "Oui."]
        );
    }
}
