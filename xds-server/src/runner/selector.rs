//! Label selectors in kubectl syntax, for `up --from` and `--to`:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
//! joined by commas (all must hold).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    Absent(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector(Vec<Req>);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_of(s: &str, whole: &str) -> Result<BTreeSet<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("selector {whole:?}: expected a set like (a,b)"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in split_top(s)
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad_key = |k: &str| k.is_empty() || k.contains(char::is_whitespace);
            let req = if let Some(k) = part.strip_prefix('!') {
                Req::Absent(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::Ne(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Req::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Req::NotIn(k.trim().to_string(), set_of(rest, s)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Req::In(k.trim().to_string(), set_of(rest, s)?)
            } else {
                Req::Exists(part.to_string())
            };
            let key = match &req {
                Req::Eq(k, _)
                | Req::Ne(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::Absent(k) => k,
            };
            if bad_key(key) {
                return Err(format!("selector {s:?}: cannot read {part:?}"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::Ne(k, v) => labels.get(k) != Some(v),
            Req::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Req::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubectl_selector_forms_match_as_kubectl_does() {
        let l = labels(&[("app", "sleep"), ("tier", "web")]);
        for (sel, want) in [
            ("app=sleep", true),
            ("app==sleep", true),
            ("app!=sleep", false),
            ("app=sleep,tier=web", true),
            ("app=sleep,tier=db", false),
            ("app in (sleep, httpbin)", true),
            ("app notin (sleep)", false),
            ("app in (httpbin),tier", false),
            ("tier", true),
            ("!tier", false),
            ("!version", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).expect(sel).matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn unreadable_selectors_are_errors() {
        for bad in ["=x", "app in sleep", "a b"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
