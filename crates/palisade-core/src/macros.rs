//! Macros the layer crates share.

/// Forwards builder methods to the `config` field's builder of the same name:
/// a layer builder that wraps a config builder (`self.config`) offers each of
/// its knobs without writing the same three lines per knob.
///
/// ```
/// struct ConfigBuilder { n: u32 }
/// impl ConfigBuilder {
///     fn limit(mut self, n: u32) -> Self { self.n = n; self }
/// }
/// struct LayerBuilder { config: ConfigBuilder }
/// impl LayerBuilder {
///     palisade_core::forward_config! {
///         /// See `ConfigBuilder::limit`.
///         limit(n: u32);
///     }
/// }
/// let built = LayerBuilder { config: ConfigBuilder { n: 0 } }.limit(3);
/// assert_eq!(built.config.n, 3);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! forward_config {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.config = self.config.$name($($arg),*);
                self
            }
        )*
    };
}

/// Writes the four protocol-choosing methods of a layer builder, `.protocol(p)`,
/// `.grpc()`, `.http()` and `.plain()`, inside its `impl` block, with the same
/// docs on every layer: a shared sentence, then this layer's doc fragment
/// (what the protocol means here); `.protocol(p)` ends with a pointer to
/// [`protocol`](crate::protocol).
///
/// `builder` is the builder type with `_` where the protocol parameter stands
/// (every other parameter is an identifier of the surrounding `impl`). An
/// optional `bound` is a trait every chosen protocol must implement. `rebuild`
/// makes the builder with the new protocol from `self` and it, written as a
/// closure over them that also names the new protocol's type parameter (so the
/// body can use it, as in `Q::IS_GRPC`). The fragments, in the order `protocol`, `grpc`, `http`,
/// `plain`, are strings (markdown, links resolved where the macro is used).
///
/// ```
/// use palisade_core::protocol::{Grpc, IsGrpc, Unchosen};
///
/// struct Builder<P, T> { protocol: P, limit: T, grpc_headers: bool }
/// impl<P, T> Builder<P, T> {
///     palisade_core::protocol_methods! {
///         builder: Builder<_, T>,
///         bound: IsGrpc,
///         rebuild: |self, protocol: Q| Builder { protocol, limit: self.limit, grpc_headers: Q::IS_GRPC },
///         protocol: "It decides what counts as a failure.",
///         grpc: "statuses in trailers count.",
///         http: "5xx statuses count.",
///         plain: "every `Ok` counts as a success.",
///     }
/// }
/// impl<P: IsGrpc, T> Builder<P, T> {
///     fn build(self) -> (P, T, bool) { (self.protocol, self.limit, self.grpc_headers) }
/// }
/// let unchosen = || Builder { protocol: Unchosen, limit: 3, grpc_headers: false };
/// let (protocol, limit, grpc_headers) = unchosen().grpc().build();
/// assert!(matches!(protocol, Grpc { .. }));
/// assert_eq!((limit, grpc_headers), (3, true));
/// assert!(!unchosen().http().build().2);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! protocol_methods {
    (
        builder: $builder:ident<$($before:ident,)* _ $(, $after:ident)*>,
        $(bound: $bound:path,)?
        rebuild: |$this:ident, $protocol:ident: $new:ident| $rebuild:expr,
        protocol: $protocol_doc:expr,
        grpc: $grpc_doc:expr,
        http: $http_doc:expr,
        plain: $plain_doc:expr $(,)?
    ) => {
        /// Speaks `protocol`: [`Grpc`](palisade_core::protocol::Grpc),
        /// [`Http`](palisade_core::protocol::Http),
        /// [`Plain`](palisade_core::protocol::Plain) or a classifier refined with
        /// [`ClassifyExt`](palisade_core::classify::ClassifyExt).
        #[doc = $protocol_doc]
        ///
        /// The builder has no `build()` until a protocol is chosen, here or with
        /// `.grpc()`, `.http()` or `.plain()`, the same four methods as on every
        /// layer builder (see [`palisade_core::protocol`]).
        pub fn protocol<$new $(: $bound)?>(
            $this,
            $protocol: $new,
        ) -> $builder<$($before,)* $new $(, $after)*> {
            $rebuild
        }

        /// Speaks gRPC over http (a tonic `Channel`), as
        /// `.protocol(Grpc::default())` ([`Grpc`](palisade_core::protocol::Grpc)):
        #[doc = $grpc_doc]
        pub fn grpc(self) -> $builder<$($before,)* $crate::protocol::Grpc $(, $after)*> {
            self.protocol(<$crate::protocol::Grpc as ::core::default::Default>::default())
        }

        /// Speaks http (a hyper client), as `.protocol(Http::default())`
        /// ([`Http`](palisade_core::protocol::Http)):
        #[doc = $http_doc]
        pub fn http(self) -> $builder<$($before,)* $crate::protocol::Http $(, $after)*> {
            self.protocol(<$crate::protocol::Http as ::core::default::Default>::default())
        }

        /// Speaks no http (any other `Service`), as `.protocol(Plain)`
        /// ([`Plain`](palisade_core::protocol::Plain)):
        #[doc = $plain_doc]
        pub fn plain(self) -> $builder<$($before,)* $crate::protocol::Plain $(, $after)*> {
            self.protocol($crate::protocol::Plain)
        }
    };
}
