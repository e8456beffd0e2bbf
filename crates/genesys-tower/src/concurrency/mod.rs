//! A shared in-flight limit and client-side pacing learned from rate-limit headers.
