//! Per-route overrides: one table, one rule for duplicates, for every layer.
//!
//! A layer that lets a user override its settings for one route (the
//! timeout's, the retry's and the fallback's `route(...)`, the keyed
//! breaker's `key_config`, the keyed bulkhead's `key_limit`) collects the
//! overrides in a [`RouteTableBuilder`] and validates them into a
//! [`RouteTable`] in its `build()`:
//!
//! - a route is matched **exactly** against what the protocol's
//!   [`Inspect::route`](crate::protocol::Inspect::route) reports (the http
//!   path, or the gRPC method as `/package.Service/Method`), or against the
//!   key a keyed layer derives from the request;
//! - an **empty** route and a route configured **twice** are a
//!   [`ConfigError`] at `build()` that names the route: a duplicate is
//!   always a mistake (two settings for one route, of which only one can
//!   apply), so no layer silently picks one;
//! - a lookup on the request path allocates nothing and takes no lock: a
//!   table of up to [`SCAN_LIMIT`] routes is scanned (a length check, then
//!   the bytes of the routes of the same length: no hashing for the few
//!   routes most layers have), a larger one is hashed. Measured with
//!   `cargo bench -p palisade-benches --bench keyed` (16 routes): a binary
//!   search over the sorted routes cost about 15 ns more per call than
//!   hashing, its string comparisons' branches being unpredictable.
//!
//! ```
//! use palisade_core::route::{RouteTable, RouteTableBuilder};
//!
//! let mut routes = RouteTableBuilder::new();
//! routes.push("/echo.Echo/Slow", 20);
//! routes.push("/echo.Echo/Fast", 1);
//! let table: RouteTable<u32> = routes.build("timeout", "route").unwrap();
//! assert_eq!(table.get("/echo.Echo/Slow"), Some(&20));
//! assert_eq!(table.get("/echo.Echo/Other"), None);
//!
//! let mut twice = RouteTableBuilder::new();
//! twice.push("/a", 1);
//! twice.push("/a", 2);
//! let err = twice.build("retry", "route").unwrap_err();
//! assert_eq!(err.field(), "route");
//! assert!(err.to_string().contains("`/a` is configured twice"), "{err}");
//! ```

use std::collections::HashMap;
use std::fmt;

use crate::error::ConfigError;

/// Tables of up to this many routes are scanned; larger ones are hashed.
pub const SCAN_LIMIT: usize = 8;

/// The overrides a builder has collected, not yet validated; see the
/// [module docs](self).
#[derive(Clone, PartialEq)]
pub struct RouteTableBuilder<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for RouteTableBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl<T> RouteTableBuilder<T> {
    /// No overrides.
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// Adds the override `value` for `route`. Duplicates and empty routes are
    /// kept until [`build`](Self::build), which rejects them.
    pub fn push(&mut self, route: impl Into<String>, value: T) {
        self.entries.push((route.into(), value));
    }

    /// Whether no override was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The overrides added so far, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Validates the overrides into a table.
    ///
    /// Fails with a [`ConfigError`] of `layer` and `field` for an empty route
    /// or a route added more than once (naming the route).
    pub fn build(self, layer: &'static str, field: &'static str) -> Result<RouteTable<T>, ConfigError> {
        let mut entries: Vec<(Box<str>, T)> = self
            .entries
            .into_iter()
            .map(|(route, value)| (route.into_boxed_str(), value))
            .collect();
        if entries.iter().any(|(route, _)| route.is_empty()) {
            return Err(ConfigError::new(layer, field, "must not be empty"));
        }
        // Stable: of two equal routes the first added comes first, so the
        // error names a route exactly as the user wrote it.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(ConfigError::new(
                layer,
                field,
                format!("`{}` is configured twice", pair[0].0),
            ));
        }
        let index = (entries.len() > SCAN_LIMIT).then(|| {
            entries
                .iter()
                .enumerate()
                .filter_map(|(at, (route, _))| Some((route.clone(), u32::try_from(at).ok()?)))
                .collect()
        });
        Ok(RouteTable {
            entries: entries.into_boxed_slice(),
            index,
        })
    }
}

/// Where a route's override sits in its [`RouteTable`]: a small copyable
/// index that a call's future can keep instead of a borrow of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteIndex(u32);

/// A validated, immutable table of per-route overrides, exact-matched; see
/// the [module docs](self). Built by [`RouteTableBuilder::build`].
#[derive(Clone, PartialEq)]
pub struct RouteTable<T> {
    /// Sorted by route, no duplicates, no empty route.
    entries: Box<[(Box<str>, T)]>,
    /// Each route's position in `entries`, for a table of more than
    /// [`SCAN_LIMIT`] routes.
    index: Option<HashMap<Box<str>, u32>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<T: fmt::Debug> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl<T> RouteTable<T> {
    /// A table without overrides.
    pub fn empty() -> Self {
        Self {
            entries: Box::new([]),
            index: None,
        }
    }

    /// Whether the table has no override (a layer then skips finding the
    /// request's route at all).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many routes have an override.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The override for exactly `route`, if any. Allocates nothing.
    #[inline]
    pub fn get(&self, route: &str) -> Option<&T> {
        self.find(route).map(|at| &self.entries[at.0 as usize].1)
    }

    /// Where the override for exactly `route` is, if any, to look it up
    /// later with [`at`](Self::at). Allocates nothing.
    #[inline]
    pub fn find(&self, route: &str) -> Option<RouteIndex> {
        if let Some(index) = &self.index {
            return index.get(route).copied().map(RouteIndex);
        }
        self.entries
            .iter()
            .position(|(key, _)| key.len() == route.len() && **key == *route)
            .and_then(|at| u32::try_from(at).ok())
            .map(RouteIndex)
    }

    /// The override at `index` (from [`find`](Self::find) on this table).
    #[inline]
    pub fn at(&self, index: RouteIndex) -> Option<&T> {
        self.entries.get(index.0 as usize).map(|(_, value)| value)
    }

    /// The routes and their overrides, sorted by route.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, u32)]) -> Result<RouteTable<u32>, ConfigError> {
        let mut builder = RouteTableBuilder::new();
        for (route, value) in routes {
            builder.push(*route, *value);
        }
        builder.build("layer", "route")
    }

    #[test]
    fn lookup_is_exact() {
        let t = table(&[("/b", 2), ("/a", 1), ("/echo.Echo/Slow", 3)]).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("/a"), Some(&1));
        assert_eq!(t.get("/b"), Some(&2));
        assert_eq!(t.get("/echo.Echo/Slow"), Some(&3));
        assert_eq!(t.get("/echo.Echo/Slo"), None);
        assert_eq!(t.get("/echo.Echo/Slow/"), None);
        assert_eq!(t.get("/A"), None);
        assert_eq!(t.get(""), None);
        let at = t.find("/b").unwrap();
        assert_eq!(t.at(at), Some(&2));
        assert_eq!(
            t.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["/a", "/b", "/echo.Echo/Slow"]
        );
    }

    #[test]
    fn scanned_and_hashed_tables_find_the_same_routes() {
        for n in [1, SCAN_LIMIT, SCAN_LIMIT + 1, 40] {
            let routes: Vec<(String, u32)> = (0..n).map(|i| (format!("/pkg.S{i}/M"), i as u32)).collect();
            let mut builder = RouteTableBuilder::new();
            for (route, value) in &routes {
                builder.push(route.clone(), *value);
            }
            let table = builder.build("layer", "route").unwrap();
            for (route, value) in &routes {
                assert_eq!(table.get(route), Some(value), "{n} routes: {route}");
                assert_eq!(table.find(route).and_then(|at| table.at(at)), Some(value));
            }
            for miss in ["/pkg.S/M", "/pkg.S1/", "", "/pkg.S1/MM", "/PKG.S1/M"] {
                assert_eq!(table.get(miss), None, "{n} routes: {miss}");
            }
        }
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let t: RouteTable<u32> = RouteTable::default();
        assert!(t.is_empty());
        assert_eq!(t.get("/a"), None);
        assert_eq!(t.find("/a"), None);
        assert!(table(&[]).unwrap().is_empty());
        assert!(RouteTableBuilder::<u32>::new().is_empty());
    }

    #[test]
    fn duplicates_and_empty_routes_are_config_errors() {
        let err = table(&[("/a", 1), ("/b", 2), ("/a", 3)]).unwrap_err();
        assert_eq!(err.layer(), "layer");
        assert_eq!(err.field(), "route");
        assert!(err.to_string().contains("`/a` is configured twice"), "{err}");
        // Even with equal values: two settings for one route are a mistake.
        assert!(table(&[("/a", 1), ("/a", 1)]).is_err());
        let err = table(&[("/a", 1), ("", 2)]).unwrap_err();
        assert_eq!(err.field(), "route");
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }

    #[test]
    fn the_builder_keeps_the_order_of_insertion() {
        let mut b = RouteTableBuilder::new();
        b.push("/z", 1);
        b.push("/a", 2);
        assert_eq!(b.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["/z", "/a"]);
        assert_eq!(format!("{b:?}"), r#"{"/z": 1, "/a": 2}"#);
    }
}
