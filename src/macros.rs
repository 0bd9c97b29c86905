//! Macros shared by the concern modules.

/// The `get_ref`, `get_mut` and `into_inner` accessors of a service whose inner service is
/// the field `inner` of type `S`; expands inside an `impl` block.
macro_rules! inner_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
