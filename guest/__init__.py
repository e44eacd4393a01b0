"""Files the image builder copies into guest images, and its chroot steps."""
