//! S3 listing semantics (string prefixes, any delimiter, `start-after` pagination) on top of
//! `object_store`'s directory-style listings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    /// Set when more entries follow: the last key or prefix of this page, to pass as
    /// `start_after` for the next one.
    pub next_start_after: Option<String>,
}

enum Item {
    Object(ListedObject),
    Prefix,
}

/// Builds one page from every object under the listed directory (`all`, any order) and the
/// common prefixes a delimiter listing already produced (`dirs`, each ending in '/').
pub fn paginate(
    all: Vec<ListedObject>,
    dirs: Vec<String>,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
    max_keys: usize,
) -> ListPage {
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for d in dirs {
        if d.starts_with(prefix) {
            items.insert(d, Item::Prefix);
        }
    }
    for o in all {
        if !o.key.starts_with(prefix) {
            continue;
        }
        let rest = &o.key[prefix.len()..];
        match delimiter.filter(|d| !d.is_empty()).and_then(|d| rest.find(d).map(|i| i + d.len())) {
            Some(end) => {
                let cp = o.key[..prefix.len() + end].to_owned();
                items.insert(cp, Item::Prefix);
            }
            None => {
                items.insert(o.key.clone(), Item::Object(o));
            }
        }
    }
    // A marker naming a common prefix (as a previous page's last entry does) skips everything
    // rolled up under it; otherwise entries whose keys all sort at or before it are skipped.
    let marker = start_after.map(|m| {
        let names_prefix = delimiter.is_some_and(|d| !d.is_empty() && m.ends_with(d)) && m.starts_with(prefix);
        if names_prefix { format!("{m}{}", char::MAX) } else { m.to_owned() }
    });
    let mut page = ListPage::default();
    let mut iter = items
        .into_iter()
        .filter(|(k, item)| {
            let Some(marker) = &marker else { return true };
            match item {
                Item::Object(_) => k.as_str() > marker.as_str(),
                // Keys under a common prefix sort up to prefix + U+10FFFF.
                Item::Prefix => format!("{k}{}", char::MAX).as_str() > marker.as_str(),
            }
        })
        .peekable();
    let mut last = None;
    let mut taken = 0;
    while taken < max_keys {
        let Some((k, item)) = iter.next() else { break };
        match item {
            Item::Object(o) => page.objects.push(o),
            Item::Prefix => page.common_prefixes.push(k.clone()),
        }
        last = Some(k);
        taken += 1;
    }
    if iter.peek().is_some() {
        page.next_start_after = last;
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(k: &str) -> ListedObject {
        ListedObject { key: k.into(), size: 1, etag: None, last_modified: DateTime::<Utc>::MIN_UTC }
    }

    fn keys(p: &ListPage) -> (Vec<&str>, Vec<&str>) {
        (p.objects.iter().map(|o| o.key.as_str()).collect(), p.common_prefixes.iter().map(|s| s.as_str()).collect())
    }

    #[test]
    fn delimiter_groups_and_paginates() {
        let all = ["a/1", "a/2", "a/b/3", "ab", "b", "c/d"].map(obj).to_vec();
        let p = paginate(all.clone(), vec![], "", Some("/"), None, 1000);
        assert_eq!(keys(&p), (vec!["ab", "b"], vec!["a/", "c/"]));
        assert_eq!(p.next_start_after, None);

        let p = paginate(all.clone(), vec![], "a", Some("/"), None, 2);
        assert_eq!(keys(&p), (vec!["ab"], vec!["a/"]));
        assert_eq!(p.next_start_after, None);

        let p = paginate(all.clone(), vec![], "", None, None, 2);
        assert_eq!(keys(&p), (vec!["a/1", "a/2"], vec![]));
        assert_eq!(p.next_start_after.as_deref(), Some("a/2"));
        let p = paginate(all.clone(), vec![], "", None, Some("a/2"), 10);
        assert_eq!(keys(&p).0, vec!["a/b/3", "ab", "b", "c/d"]);

        // Continuing after a common prefix skips the keys rolled up under it.
        let all2 = ["p/a", "p/d/x", "p/d/y", "p/e"].map(obj).to_vec();
        let p = paginate(all2.clone(), vec![], "p/", Some("/"), Some("p/d/"), 10);
        assert_eq!(keys(&p), (vec!["p/e"], vec![]));
        // A start-after inside a common prefix keeps the prefix: later keys roll up into it.
        let p = paginate(all2, vec![], "p/", Some("/"), Some("p/d/x"), 10);
        assert_eq!(keys(&p), (vec!["p/e"], vec!["p/d/"]));

        let p = paginate(all, vec![], "a/", Some("b"), None, 10);
        assert_eq!(keys(&p), (vec!["a/1", "a/2"], vec!["a/b"]));
    }
}
