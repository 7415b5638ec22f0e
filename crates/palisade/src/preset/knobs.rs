//! The layer settings both preset builders share, written once.

/// Writes the methods that set each layer of a preset builder whose
/// protocol is `$proto`: the builder has the fields `breaker`,
/// `attempt_timeout`, `total_timeout`, `retry`, `bulkhead`, `balancer` and
/// `listeners`.
macro_rules! layer_knobs {
    ($proto:ident) => {
        /// Attempts after the first (default 1, to another instance), the
        /// seed's `retries`. Shorthand for `.retry(|r| r.retries(n))`.
        pub fn retries(self, retries: u32) -> Self {
            self.retry(|r| r.retries(retries))
        }

        /// Each attempt's timeout (default 30 s), the seed's `timeout`: every
        /// attempt gets the whole of it, bounded by the call's deadline.
        /// `None` turns it off.
        pub fn attempt_timeout(self, timeout: impl Into<Option<std::time::Duration>>) -> Self {
            let timeout = timeout.into();
            self.attempt_timeout_layer(|t| t.timeout(timeout))
        }

        /// The whole call's timeout, over every attempt and backoff (default
        /// none: the caller's deadline, a per-call option or an inherited
        /// `grpc-timeout`, still bounds it).
        pub fn total_timeout(self, timeout: impl Into<Option<std::time::Duration>>) -> Self {
            let timeout = timeout.into();
            self.total_timeout_layer(|t| t.timeout(timeout))
        }

        /// Sets any knob of the per-instance breaker, starting from the
        /// preset's (the seed's) numbers.
        pub fn breaker(
            mut self,
            f: impl FnOnce(
                palisade_circuit_breaker::CircuitBreakerConfigBuilder,
            ) -> palisade_circuit_breaker::CircuitBreakerConfigBuilder,
        ) -> Self {
            self.breaker = f(self.breaker);
            self
        }

        /// Sets any knob of the per-attempt timeout layer.
        pub fn attempt_timeout_layer(
            mut self,
            f: impl FnOnce(palisade_timeout::TimeoutBuilder<$proto>) -> palisade_timeout::TimeoutBuilder<$proto>,
        ) -> Self {
            self.attempt_timeout = f(self.attempt_timeout);
            self
        }

        /// Sets any knob of the total timeout layer.
        pub fn total_timeout_layer(
            mut self,
            f: impl FnOnce(palisade_timeout::TimeoutBuilder<$proto>) -> palisade_timeout::TimeoutBuilder<$proto>,
        ) -> Self {
            self.total_timeout = f(self.total_timeout);
            self
        }

        /// Sets any knob of the retry layer (backoff, budget, replay cap,
        /// predicate settings, per-route overrides).
        pub fn retry(
            mut self,
            f: impl FnOnce(palisade_retry::RetryLayerBuilder<$proto>) -> palisade_retry::RetryLayerBuilder<$proto>,
        ) -> Self {
            self.retry = f(self.retry);
            self
        }

        /// Sets any knob of the client's bulkhead, starting from the preset's
        /// (1,024 calls in flight, no queue).
        pub fn bulkhead(
            mut self,
            f: impl FnOnce(palisade_bulkhead::BulkheadConfigBuilder) -> palisade_bulkhead::BulkheadConfigBuilder,
        ) -> Self {
            self.bulkhead = f(self.bulkhead);
            self
        }

        /// Sets any knob of the balancer (all-open policy, ejection cap,
        /// panic threshold, load metric); ignored without a registry. It
        /// speaks [`Joined`](palisade_body::Joined) over the stack's protocol:
        /// it sits above each instance's breaker and adds its load tracking
        /// to the breaker's response body instead of wrapping it.
        pub fn balancer(
            mut self,
            f: impl FnOnce(
                palisade_discovery::PeerDiscoveryBuilder<palisade_body::Joined<$proto>>,
            ) -> palisade_discovery::PeerDiscoveryBuilder<palisade_body::Joined<$proto>>,
        ) -> Self {
            self.balancer = f(self.balancer);
            self
        }

        /// Adds a listener that hears every layer's events (breaker
        /// transitions, retries, timeouts, rejections, peer changes).
        pub fn listener(mut self, listener: std::sync::Arc<dyn palisade_core::event::Listener>) -> Self {
            self.listeners.push(listener);
            self
        }
    };
}

/// Gives every listener to each of the builders named (each has a
/// `listener` method): every layer of a preset hears every listener.
macro_rules! hear_all {
    ($listeners:expr; $($builder:ident),* $(,)?) => {
        for listener in $listeners {
            $($builder = $builder.listener(listener.clone());)*
        }
    };
}

pub(crate) use {hear_all, layer_knobs};
