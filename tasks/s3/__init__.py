"""Step kinds upload and expect_objects (and absent), by concern: keys, objects, upload, observe, content, stream."""
