//! The appliance control plane: REST server, desired state, snapshot compilation, next hops.
