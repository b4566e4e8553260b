//! End-to-end tests: the real server binary, real clients, real disk.

mod server;
mod services;

mod admin_stats;
mod bad_input;
mod bench;
mod browser;
mod cli;
mod clients;
mod cluster;
mod connection;
mod crash;
mod deadlines;
mod delivery;
mod density;
mod density_graph;
mod edges;
mod full_disk;
mod guard;
mod join;
mod moderation;
mod players;
mod proxy;
mod resume;
mod rooms;
mod shutdown;
mod slow_consumer;
mod web;
