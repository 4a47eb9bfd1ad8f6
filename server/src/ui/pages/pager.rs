//! Page numbers for lists that grow: `?page=N`, a fixed number of rows a page, and the links
//! `_pager.html` draws (`rel="prev"` / `rel="next"`).

use serde::{Deserialize, Serialize};

/// Rows on one page of a list.
pub const PER_PAGE: usize = 50;

/// The `page` query parameter. Kept as text so a mistyped number shows page 1 rather than an
/// error page.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub page: Option<String>,
}

impl PageQuery {
    /// The page asked for, counting from 1.
    pub fn number(&self) -> usize {
        self.page
            .as_deref()
            .and_then(|p| p.trim().parse::<usize>().ok())
            .filter(|&p| p >= 1)
            .unwrap_or(1)
    }
}

/// What `_pager.html` needs: where the list is and the links either side.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pager {
    pub page: usize,
    pub pages: usize,
    pub total: usize,
    /// Address of the page before (newer rows), if any.
    pub prev: Option<String>,
    /// Address of the page after (older rows), if any.
    pub next: Option<String>,
}

impl Pager {
    /// Links for page `page` of `total` rows at `path`, keeping the non-empty `params` (a list's
    /// filters) in every link.
    pub fn new(path: &str, params: &[(&str, &str)], page: usize, total: usize) -> Pager {
        let pages = total.div_ceil(PER_PAGE).max(1);
        let link = |n: usize| {
            let mut query: Vec<(&str, String)> = params
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (*k, (*v).to_string()))
                .collect();
            if n > 1 {
                query.push(("page", n.to_string()));
            }
            match serde_html_form::to_string(&query) {
                Ok(q) if !q.is_empty() => format!("{path}?{q}"),
                _ => path.to_string(),
            }
        };
        Pager {
            page,
            pages,
            total,
            prev: (page > 1).then(|| link((page - 1).min(pages))),
            next: (page < pages).then(|| link(page + 1)),
        }
    }

    /// Index of the first row of the page.
    pub fn offset(page: usize) -> usize {
        page.saturating_sub(1).saturating_mul(PER_PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_either_side_keep_the_filters() {
        let p = Pager::new(
            "/ui/audit",
            &[("kind", "task_created"), ("user", "")],
            2,
            120,
        );
        assert_eq!(p.pages, 3);
        assert_eq!(p.prev.as_deref(), Some("/ui/audit?kind=task_created"));
        assert_eq!(
            p.next.as_deref(),
            Some("/ui/audit?kind=task_created&page=3")
        );
        let last = Pager::new("/ui/", &[], 3, 120);
        assert_eq!(last.next, None);
        assert_eq!(last.prev.as_deref(), Some("/ui/?page=2"));
    }

    #[test]
    fn one_page_has_no_links() {
        let p = Pager::new("/ui/", &[], 1, 50);
        assert_eq!((p.pages, p.prev, p.next), (1, None, None));
        assert_eq!(Pager::new("/ui/", &[], 1, 0).pages, 1);
    }

    #[test]
    fn a_page_past_the_end_leads_back() {
        let p = Pager::new("/ui/", &[], 9, 60);
        assert_eq!(p.prev.as_deref(), Some("/ui/?page=2"));
        assert_eq!(p.next, None);
    }

    #[test]
    fn bad_page_numbers_mean_the_first() {
        for bad in [None, Some("x"), Some("0"), Some("-1"), Some("")] {
            let q = PageQuery {
                page: bad.map(str::to_string),
            };
            assert_eq!(q.number(), 1, "{bad:?}");
        }
        let q = PageQuery {
            page: Some("3".into()),
        };
        assert_eq!(q.number(), 3);
        assert_eq!(Pager::offset(3), 100);
    }
}
