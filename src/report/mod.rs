//! Sinks for a finished run: the console table, CSV, the HTML report, the
//! SQLite history of all runs, and comparing runs; and the typed reader of a
//! run folder they read back.

pub mod compare;
pub mod compare_experiments;
pub mod console;
pub mod csv;
pub mod experiment_history;
pub mod gate;
pub mod html;
pub mod run_folder;
pub mod sqlite;
