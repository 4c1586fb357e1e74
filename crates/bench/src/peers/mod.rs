//! The peers measured in the same run, on the same PostgreSQL and machine:
//! pgmq, RabbitMQ and the raw PostgreSQL ceiling (pgbench). Each takes a [`RunSpec`] and
//! returns what it [`Measured`]; each is tuned as its own documentation recommends (see
//! docs/PERFORMANCE.md, "Peers and how they are tuned").

pub mod ceiling;
pub mod dbos;
pub mod pgmq;
pub mod rabbitmq;
