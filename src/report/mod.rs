//! Sinks for a finished run: the console table, CSV, the HTML report, the
//! SQLite history of all runs, and comparing runs.

pub mod compare;
pub mod console;
pub mod csv;
pub mod html;
pub mod sqlite;
