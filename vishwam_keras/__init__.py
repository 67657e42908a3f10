import vishwam_keras.ops
