"""Guest images: image folders (folder), the NoCloud seed disk a local server
boots with (seed), building folders with debootstrap (build, rootfs) and
uploading them to OpenStack's Glance (upload)."""
