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
