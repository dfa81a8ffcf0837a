//! Statistics over stored results, free of the store: the `db trend`, `db regressions` and
//! `db compare` commands read series and samples from DuckDB and hand them here.
//!
//! * [`changepoint`]: change points of a series by E-Divisive means (Matteson & James 2014)
//!   with a Student t-test between neighbouring segments, as Apache Otava (ex-Hunter) and
//!   MongoDB's signal processing do.
//! * [`compare`]: one combination in two runs: ratio of medians with a bootstrap 95%
//!   confidence interval, a Mann-Whitney U p-value, and Holm's correction across
//!   combinations.
//! * [`special`]: the distribution functions those need (Student t, normal).
//! * [`rng`]: the seeded generator of the bootstrap (and of the tests' and benchmark's series).

pub mod changepoint;
pub mod compare;
pub mod rng;
pub mod special;
