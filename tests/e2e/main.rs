//! End-to-end tests: the real server binary, real clients, real disk.

mod server;

mod bad_input;
mod bench;
mod cli;
mod connection;
mod delivery;
mod density;
mod guard;
mod join;
mod moderation;
mod resume;
mod shutdown;
mod slow_consumer;
