//! Hardware profiles (device classes, encoder preference chains, link classes and bitrate
//! ladders) as data plus validation, with no GStreamer dependency.
//!
//! Empty in this version: the profiles and their resolver arrive with the field-client issue.
