"""The instruction pools of the paper modalities, one phrasing per line: this project's own
phrasings (the released ones are not copied). Their registry records hold them as tuples."""

IMAGE_TO_TEXT = """\
Describe this image.
Write a caption for the picture below.
What does this image show?
Give a short description of the image.
Caption this photo.
Tell me what you see in this picture.
Summarize the content of the image in one sentence.
Provide a brief caption for the following image.
Explain what is depicted here.
What is in this picture?
Write one sentence describing the image.
Look at the image and describe it.
Generate a caption for this image.
Briefly describe the scene in the picture.
Can you describe this image for me?
What can be seen in the following image?
Describe the main subject of this picture.
Give this image a descriptive title.
Produce a concise description of the image.
Write an alt text for this image.
How would you describe this picture to someone who cannot see it?
State what the image contains.
Describe the picture in plain words.
Create a short caption that fits this image.
What is shown in the image below?
Put the content of this image into words.
Name what appears in this picture.
Write a one-line summary of this image.
Describe this visual content.
Offer a caption for the image.
What is this a picture of?
Give a plain description of what the image shows.
Describe the image as precisely as you can.
Tell me briefly what this image is about.
Report what the picture depicts.
Interpret this image and describe it in text."""

TEXT_TO_IMAGE = """\
Generate an image that matches this description.
Draw a picture of the following.
Create an image based on the text.
Paint what this caption describes.
Produce a picture for this caption.
Render an image of the scene described.
Make an image that fits the following text.
Illustrate the following description.
Turn this description into an image.
Show me a picture of this.
Create a visual representation of the text below.
Generate a picture according to the caption.
Sketch an image that corresponds to this text.
Please draw the following scene.
Give me an image depicting this.
Visualize the following description.
Compose an image from this caption.
Produce an illustration of the text.
Draw what is described here.
Design a picture matching these words.
Create artwork that shows the following.
Make a picture out of this sentence.
Generate a photo-like image of this description.
Depict the following in an image.
Convert this caption into a picture.
Paint a picture that shows what the text says.
Create an image for the caption below.
I need an image of the following.
Imagine this scene and draw it.
Produce an image that this caption could describe.
Render the following text as a picture.
Draw an illustration for this caption.
Generate a matching image for this text.
Make a drawing of what is described.
Picture this for me.
Create a scene that matches the description."""

SPEECH_TO_TEXT = """\
Transcribe this speech.
Write down what is said in the audio.
Convert the following speech to text.
What does the speaker say?
Give a transcript of this recording.
Please transcribe the audio clip.
Turn this spoken audio into written text.
Write out the words spoken here.
Transcribe the following utterance.
What is being said in this clip?
Recognize the speech and write it down.
Provide the text of this speech.
Listen and transcribe.
Put this recording into words.
Produce a written transcript of the speech.
Write what you hear.
Transcribe the speaker's words exactly.
Convert this audio into text.
What words are spoken in this audio?
Please write down this sentence from the recording.
Give me the transcription of this speech.
Tell me what the voice says.
Transcribe this voice recording.
Type out the spoken content.
Decode the speech into text.
Write the transcript for the following audio.
Render this speech as text.
Note down what the speaker is saying.
Recognize the following speech.
Provide a verbatim transcript.
What is the content of this spoken sentence?
Change this speech into text.
Capture the spoken words in writing.
Write the words of this utterance.
Listen to this and write it down.
Transcribe the speech below."""

TEXT_TO_SPEECH = """\
Read this text aloud.
Speak the following sentence.
Convert the text to speech.
Say this out loud.
Generate speech for the following text.
Please read the sentence below.
Turn this text into spoken audio.
Synthesize speech from this text.
Give me a recording of this sentence.
Pronounce the following text.
Produce spoken audio of the text.
Read out the following.
Voice this sentence.
Narrate the following text.
Speak these words.
Make an audio clip of someone saying this.
Say the following sentence clearly.
Create a speech recording of this text.
Read this aloud for me.
Please say this.
Turn the following words into speech.
Generate a voice reading of this text.
Read the following passage out loud.
Produce speech that says the following.
Vocalize this text.
Recite the following sentence.
Speak this text in a natural voice.
Convert the following written text into speech.
I would like to hear this sentence spoken.
Give a spoken version of this text.
Render this sentence as speech.
Make this text audible.
Read the text below in a clear voice.
Synthesize a recording of this sentence.
Utter the following words.
Say this sentence for me."""

MUSIC_TO_TEXT = """\
Describe this music.
What kind of music is this?
Write a caption for this piece of music.
Describe the instruments and mood of this clip.
Tell me about this music.
Give a short description of the music.
What does this music sound like?
Summarize the musical content of this clip.
Characterize the following piece.
Describe the genre, tempo and instruments.
Write a description of this song.
Caption this music clip.
Explain what you hear in this music.
What instruments are playing here?
Give a one-sentence description of this music.
Describe the style of this recording.
How would you describe this piece?
Provide a caption for the audio below.
Listen to this music and describe it.
Describe the melody and rhythm of this clip.
What is the mood of this music?
Write a brief review of this music.
Label this music with a description.
Describe this musical excerpt.
Tell me the character of this tune.
What can you say about this music?
Write a caption describing this track.
Describe the sound of this piece.
Summarize this song in words.
Describe this tune in a sentence.
Give details about this music.
Explain the musical features of this clip.
Write a text description for this music.
Describe the harmony and instrumentation.
What is happening musically here?
Provide a short musical description."""

TEXT_TO_MUSIC = """\
Compose music that fits this description.
Generate a music clip based on the text.
Create a piece of music as described.
Play music matching this caption.
Produce music for the following description.
Write a tune that sounds like this.
Make music according to the text below.
Generate a song that matches this description.
Create an instrumental clip from this caption.
Compose a short piece based on the following.
Turn this description into music.
Play a melody that fits this text.
Generate audio music for the caption.
Create a musical excerpt matching these words.
Compose something that sounds like this.
Produce a music clip with these characteristics.
Make a tune that matches the following.
Generate music with the described mood and instruments.
Create music that follows this description.
Perform a piece described by the text.
Render this caption as music.
Write music for the following description.
Compose a track matching this caption.
Make a short song as described below.
Generate an instrumental in this style.
Play something that fits this description.
Create the music this text describes.
Produce a melody based on this caption.
Compose a clip with the following qualities.
Generate a tune according to these words.
Synthesize music from this description.
Make a musical piece that fits the text.
Create a song for this caption.
Compose music in the style described.
Generate a musical clip like this.
Give me music that matches this description."""
