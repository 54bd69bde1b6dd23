"""Camera geometry for 3D pose: camera models and calibration files (camera), and the contract
between the 2D->3D lifter network and its users (lifting): input normalisation, output units
and placement of a lifted skeleton in the camera frame.

Camera frame: x right, y down, z forward (out of the lens), metres; the image's x and y run
the same way, in pixels.
"""
