//! Nothing but its dependencies: building it is the check.
