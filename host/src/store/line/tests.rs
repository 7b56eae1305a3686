use super::*;

const ID: &str = "48cfe646-87b6-44d7-8e10-1d3adecb7c11";

/// A streamed piece of session ID (content as plain text).
fn piece(content: &str, seq: u64, ms: u32) -> String {
    super::piece(ID, seq, content, &format!("2026-12-03T11:24:31.{ms:03}Z"))
}

/// The stored lines of `frames` as one chunk (events `first`, `first + 1`, ...).
fn stored(frames: &[String], id: &str, first: u64) -> Vec<String> {
    let mut prev = None;
    (0..)
        .zip(frames)
        .map(|(i, f)| {
            let mut out = String::new();
            push(&mut out, f, id, first + i, &mut prev);
            out
        })
        .collect()
}

/// The frames a chunk's lines hold, read in order.
fn read(lines: &[String], id: &str, first: u64) -> Vec<String> {
    let mut r = Reader::default();
    (0..)
        .zip(lines)
        .map(|(i, l)| r.frame(l, id, first + i).into_owned())
        .collect()
}

/// `s` cut at byte `i` (None off a character boundary).
fn cut(s: &str, i: usize) -> Option<(&str, &str)> {
    s.get(..i).zip(s.get(i..))
}

fn round_trip(frames: &[String], id: &str, first: u64) -> Vec<String> {
    let lines = stored(frames, id, first);
    assert_eq!(read(&lines, id, first), frames, "lines {lines:?}");
    lines
}

#[test]
fn a_session_frame_is_stored_without_its_tail_and_read_back_whole() {
    for seq in [0, 7, 10, 123_456, u64::MAX] {
        let f = piece("Hel\"lo\n ~{^", seq, 650);
        let lines = round_trip(std::slice::from_ref(&f), ID, seq);
        let line = &lines[0];
        assert!(
            line.starts_with("~2026-12-03T11:24:31.650Z{\"event\""),
            "{line}"
        );
        assert!(!line.contains(ID), "{line}");
        assert!(line.len() + 74 < f.len(), "{line}");
    }
}

#[test]
fn a_piece_after_a_piece_is_said_against_it() {
    let frames: Vec<String> = (0..50)
        .map(|i| {
            piece(
                &format!("\"~17962970716{i:05}|\""),
                100 + i,
                650 + i as u32 / 7,
            )
        })
        .collect();
    let lines = round_trip(&frames, ID, 100);
    assert!(lines[0].starts_with('~'));
    for l in &lines[1..] {
        assert!(l.starts_with('^') && l.len() < 30, "{l}");
    }
    let whole: usize = frames.iter().map(|f| f.len() + 1).sum();
    let kept: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(kept * 5 < whole, "{kept} of {whole} bytes");
}

/// What two lines share at the start and at the end never overlaps, however alike they are.
#[test]
fn alike_pieces_read_back_the_same() {
    let contents = [
        "a", "aa", "aaa", "aa", "a", "", "\"", "\"\"", "ab", "abab", "ba", "aba", "é", "éé", "è",
    ];
    let frames: Vec<String> = (0..)
        .zip(contents.iter().chain(contents.iter().rev()))
        .map(|(i, c)| piece(c, 10 + i, 650 + i as u32 % 3))
        .collect();
    let lines = round_trip(&frames, ID, 10);
    assert!(lines[1..].iter().all(|l| l.starts_with('^')), "{lines:?}");
}

#[test]
fn any_other_frame_is_stored_as_it_is() {
    let ours = piece("x", 5, 1);
    let cases = [
        // Another session's id, another seq: the tail is not what the row rebuilds.
        (ours.clone(), "other", 5),
        (ours.clone(), ID, 6),
        // A custom event (keys in another order), an older version's frame, odd tails.
        (
            format!("{{\"event\":\"x\",\"seq\":5,\"session_id\":\"{ID}\",\"timestamp\":\"t\"}}"),
            ID,
            5,
        ),
        (
            format!("{{\"event\":\"a\",\"session_id\":\"{ID}\",\"seq\":5}}"),
            ID,
            5,
        ),
        (
            format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"\"}}"),
            ID,
            5,
        ),
        (
            format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"x{{y\"}}"),
            ID,
            5,
        ),
        (
            format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"~t\"}}"),
            ID,
            5,
        ),
        (
            format!(",\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"t\"}}"),
            ID,
            5,
        ),
        (
            format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":05,\"timestamp\":\"t\"}}"),
            ID,
            5,
        ),
        ("{}".to_owned(), ID, 5),
        (String::new(), ID, 5),
    ];
    for (f, id, seq) in cases {
        let lines = round_trip(std::slice::from_ref(&f), id, seq);
        assert_eq!(lines[0], f, "stored as it is");
    }
    // Frames that start with a mark, with and without a tail that could be left out.
    for f in [
        format!("~{ours}"),
        format!("^{ours}"),
        "~x".to_owned(),
        "^".to_owned(),
        "~".to_owned(),
    ] {
        let lines = round_trip(std::slice::from_ref(&f), ID, 5);
        assert_eq!(lines[0], format!("~~{f}"));
    }
}

/// Every one-byte change of a piece — as the line before another piece, as the line after one,
/// and alone — reads back as the same bytes (left short, said against the one before, or kept
/// whole).
#[test]
fn every_one_byte_change_reads_back_the_same() {
    let before = piece("hé", 41, 650);
    let f = piece("hï", 42, 651);
    let after = piece("hï!", 43, 651);
    let mut forms = std::collections::BTreeMap::<char, usize>::new();
    for i in 0..=f.len() {
        let mut variants = Vec::new();
        if let (Some((a, _)), Some((_, b))) = (cut(&f, i), cut(&f, i + 1)) {
            variants.push(format!("{a}{b}"));
        }
        for c in ['~', '^', '{', '}', '"', ',', '|', '0', '9', 'a', 'é', ':'] {
            if let Some((a, b)) = cut(&f, i) {
                variants.push(format!("{a}{c}{b}"));
            }
            if let (Some((a, _)), Some((_, b))) = (cut(&f, i), cut(&f, i + 1)) {
                variants.push(format!("{a}{c}{b}"));
            }
        }
        for v in variants {
            for chunk in [
                vec![before.clone(), v.clone(), after.clone()],
                vec![v.clone(), after.clone()],
                vec![v.clone()],
            ] {
                let lines = round_trip(&chunk, ID, 44 - chunk.len() as u64);
                for l in &lines {
                    *forms.entry(l.chars().next().unwrap_or(' ')).or_default() += 1;
                }
            }
        }
    }
    // Each form was written, many times.
    for form in ['~', '^', '{'] {
        assert!(forms.get(&form).is_some_and(|n| *n > 100), "{forms:?}");
    }
}

#[test]
fn a_line_not_written_here_is_read_as_it_is() {
    for line in [
        "~no brace",
        "{\"a\":1}",
        "^1,2,3,4|xyz",
        "^x|",
        "^1,2|ab",
        "",
    ] {
        assert_eq!(Reader::default().frame(line, ID, 1), line);
    }
    assert_eq!(Reader::default().frame("~~{\"a\":1}", ID, 1), "{\"a\":1}");
    // Said against a line before that holds less than it claims: as it is, and so the next.
    let mut r = Reader::default();
    let first = r.frame("~t{ab}", ID, 1).into_owned();
    assert!(first.starts_with("{ab}"), "{first}");
    assert_eq!(r.frame("^3,3,0,0|x", ID, 2), "^3,3,0,0|x");
    assert_eq!(r.frame("^1,1,0,0|x", ID, 3), "^1,1,0,0|x");
}

/// The word-at-a-time prefix and suffix agree with a byte loop, at every length and position.
#[test]
fn shared_prefix_and_suffix_agree_with_a_byte_loop() {
    fn naive(a: &str, b: &str, from_end: bool) -> usize {
        let (x, y) = (a.as_bytes(), b.as_bytes());
        let at = |s: &[u8], i: usize| if from_end { s[s.len() - 1 - i] } else { s[i] };
        let mut n = 0;
        while n < x.len().min(y.len()) && at(x, n) == at(y, n) {
            n += 1;
        }
        let cut = |s: &str, n: usize| if from_end { s.len() - n } else { n };
        while !(a.is_char_boundary(cut(a, n)) && b.is_char_boundary(cut(b, n))) {
            n -= 1;
        }
        n
    }
    let base = "{\"event\":\"agent.partial_answer\",\"content\":\"héllo wörld\",\"metadata\":{}}";
    for len in 0..=base.len() {
        let Some(a) = base.get(..len) else { continue };
        let Some(a_end) = base.get(base.len() - len..) else {
            continue;
        };
        for i in 0..=len {
            for c in ['x', 'é', '"'] {
                for (s, t) in [(a, a), (a_end, a_end)] {
                    let (Some(p), Some(q)) = (s.get(..i), s.get(i..)) else {
                        continue;
                    };
                    let changed =
                        format!("{p}{c}{}", q.get(c.len_utf8().min(q.len())..).unwrap_or(q));
                    for (u, v) in [(t, changed.as_str()), (changed.as_str(), t), (t, t)] {
                        assert_eq!(shared_prefix(u, v), naive(u, v, false), "{u:?} {v:?}");
                        assert_eq!(shared_suffix(u, v), naive(u, v, true), "{u:?} {v:?}");
                    }
                }
            }
        }
    }
}
